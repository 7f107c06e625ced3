"""ExecuTorch + XNNPACK (.pte) for Android: PT2E int8, lowering with a delegation gate,
BundledProgram, the ExecuTorch Python runtime for verification."""

from mbv3_mobile.export.registry import FormatSpec, register_format

SPEC = register_format(FormatSpec(
    name="executorch",
    pipeline="android",
    manifest_id="executorch-xnnpack",
    title="ExecuTorch + XNNPACK",
    variants_param="quant",
    artifact="mbv3_mobile.export.executorch.package:artifact_name",
    verify_runtime="ExecuTorch Python runtime with the XNNPACK delegate, host CPU",
    parity_entries="mbv3_mobile.export.executorch.runners:parity_entries",
    bench_runtimes="mbv3_mobile.export.executorch.runners:bench_runtimes",
    harness_target="adb",
    app_platform="Android",
    extensions=(".pte", ".bpte"),
    tasks=("classification", "segmentation"),
))
