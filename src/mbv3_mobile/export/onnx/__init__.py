"""ONNX (opset 18, onnxsim-simplified) for ONNX Runtime and ONNX Runtime Mobile (.ort), with ORT static int8."""

from mbv3_mobile.export.registry import FormatSpec, register_format

SPEC = register_format(FormatSpec(
    name="onnx",
    pipeline="onnx",
    manifest_id="onnx",
    title="ONNX",
    variants_param="variants",
    artifact="mbv3_mobile.export.onnx.package:artifact_name",
    verify_runtime="onnxruntime (CPU execution provider), host",
    parity_entries="mbv3_mobile.export.onnx.runners:parity_entries",
    bench_runtimes="mbv3_mobile.export.onnx.runners:bench_runtimes",
    harness_target=None,
    app_platform="any (ONNX Runtime)",
    extensions=(".onnx", ".ort"),
    tasks=("classification", "segmentation"),
))
