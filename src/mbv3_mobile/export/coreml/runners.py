"""What parity runs for this format: every Core ML variant through the MIL interpreter, with drift
localisation from its per-op outputs mapped to nn.Module paths (Core ML runs only on macOS, so the
bench has no Core ML row here)."""

from __future__ import annotations

import json

from mbv3_mobile.export.coreml.runtime import float_pictures, module_outputs, run_package
from mbv3_mobile.graph import last_per_module
from mbv3_mobile.pipeline.contracts import ResolvedModel
from mbv3_mobile.pipeline.runner import PipelineResults
from mbv3_mobile.verify.compare import Candidate

FORMAT = "coreml"


def parity_entries(results: PipelineResults) -> list[Candidate]:
    pre = ResolvedModel.of(results.stage("resolve")).preprocessing
    entries = []
    for r in results.variants("convert").values():
        package = r.out("package")
        source_map = json.loads(r.out("source_map").read_text())

        def per_module(image, package=package, source_map=source_map):
            return last_per_module(module_outputs(package, float_pictures(image[:1], pre), source_map))

        gate = "compressed" if r.meta["compression"] else r.meta["precision"]
        entries.append(Candidate(f"coreml {r.variant} (MIL interp.)", gate, FORMAT,
                                 run=lambda x, p=package: run_package(p, x, pre), module_outputs=per_module))
    return entries
