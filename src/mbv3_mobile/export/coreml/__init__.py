"""Core ML (.mlpackage, app-ready classifier) for iOS, numerics checked on any host by the MIL
reference interpreter; also the ExecuTorch Core ML delegate .pte."""

from mbv3_mobile.export.registry import FormatSpec, register_format

SPEC = register_format(FormatSpec(
    name="coreml",
    pipeline="ios",
    manifest_id="coreml-mlprogram",
    title="Core ML",
    variants_param="variants",
    artifact="mbv3_mobile.export.coreml.package:artifact_name",
    verify_runtime="MIL reference interpreter (numpy) on the host; Core ML itself not run",
    parity_entries="mbv3_mobile.export.coreml.runners:parity_entries",
    bench_runtimes=None,
    harness_target="ios",
    app_platform="iOS",
    extensions=(".mlpackage", ".mlpackage.zip", ".pte (Core ML delegate)"),
    tasks=("classification", "segmentation"),
))
