"""What parity and the bench run for this format: the eager int8 graphs and every .pte, in the
ExecuTorch Python runtime (and, for the bench, the native runner through each .bpte)."""

from __future__ import annotations

import functools

import torch

from mbv3_mobile.export.executorch.debug import DebugProgram
from mbv3_mobile.export.executorch.runtime import run_pte
from mbv3_mobile.export.executorch.stages import load_program
from mbv3_mobile.pipeline.runner import PipelineResults
from mbv3_mobile.verify.compare import Candidate

FORMAT = "executorch"


def parity_entries(results: PipelineResults) -> list[Candidate]:
    """Rows for the parity matrix: eager int8 (the converted PT2E graphs) and every .pte."""
    entries = []
    for r in results.variants("quantize").values():
        if r.variant != "fp32":
            gm = load_program(r.out("program")).module()
            entries.append(Candidate(f"eager int8 ({r.variant}, PT2E)", "int8", FORMAT, run=lambda x, m=gm: _batched(m, x)))
    for r in results.variants("lower").values():
        pte = r.out("pte")
        program = results.stage("quantize", r.variant).out("program")
        entries.append(Candidate(f"pte {r.variant} (ExecuTorch)", "fp32" if r.variant == "fp32" else "int8", FORMAT,
                                 run=lambda x, p=pte: run_pte(p, x),
                                 # drift localisation: the program this .pte was lowered from, through ETDump
                                 module_outputs=lambda x, p=str(program): _debug_program(p)(x)))
    return entries


def bench_runtimes(results: PipelineResults) -> list[dict]:
    """The .pte files as bench rows: Python runtime (in process) and native runner (via the .bpte,
    whose first bundled picture every runtime gets: `pictures`). QAT is left out: the same int8
    program shape as PTQ, so timing it again says nothing new."""
    rows = []
    for r in results.variants("lower").values():
        if r.variant == "qat":
            continue
        precision = "fp32" if r.variant == "fp32" else "int8"
        bundle = results.stage("bundle", r.variant)
        details = {"variant": r.variant, "delegation": r.meta.get("delegation")}
        rows.append({"key": f"pte_{precision}", "label": f".pte XNNPACK {precision} (Python runtime)",
                     "precision": precision, "file": r.out("pte"), "pictures": bundle.out("inputs"),
                     "opener": "mbv3_mobile.export.executorch.bench_open:open_pte", "details": details})
        rows.append({"key": f"pte_{precision}_native", "label": f".pte XNNPACK {precision} (native runner)",
                     "precision": precision, "file": bundle.out("bpte"), "native": True, "pictures": bundle.out("inputs")})
    return rows


@functools.lru_cache(maxsize=4)
def _debug_program(path: str) -> DebugProgram:
    """One per-op debug lowering per program file, however many pictures are localised with it."""
    return DebugProgram(load_program(path))


def _batched(module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([module(x[i : i + 1]) for i in range(len(x))]).detach()
