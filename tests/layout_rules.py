"""The package's layering as data: each room's floor, lowest first. A module may import its own
floor and the floors below; an import that runs up is a defect unless `ALLOWED_UP` names it with
the reason. `tests/test_layout.py` enforces it; `scripts/layout_report.py` reports it."""

from __future__ import annotations

FLOORS = {
    "mbv3_mobile.core": 0,  # errors, atomic writes, hashes, thread picks, code fingerprints: no torch
    "mbv3_mobile.model": 1,  # the network, its configs and checkpoint layouts
    "mbv3_mobile.data": 1,  # pictures, datasets, preprocessing (a checkpoint carries its preprocessing)
    "mbv3_mobile.graph": 2,  # the FX-graph toolkit: torch.export, node -> module, q/dq, per-module outputs
    "mbv3_mobile.verify": 3,  # pure metrics: comparators, gate statistics, drift, sensitivity, MIL interpreter
    "mbv3_mobile.quantize": 4,
    "mbv3_mobile.tasks": 5,  # what a task's exports produce and how they are checked
    "mbv3_mobile.train": 6,  # training for every task: it builds the task's networks and figures
    "mbv3_mobile.pipeline": 7,  # pipelines as data, the cached runner, shared stages, publishing
    "mbv3_mobile.card": 8,
    "mbv3_mobile.export": 9,  # the format registry and one package per format
    "mbv3_mobile.crossformat": 10,  # parity and the bench: several pipelines on one checkpoint
    "mbv3_mobile.cli": 11,
    "mbv3_mobile.__main__": 11,
    # rooms of older layouts, so scripts/layout_report.py can measure an older checkout the same way
    "mbv3_mobile.report.card": 8,
    "mbv3_mobile.report.bench": 10,
    "mbv3_mobile.report": 8,
}

# importer -> imported: why this arrow may run up (one line each). Empty: none is needed.
ALLOWED_UP: dict[tuple[str, str], str] = {}


def floor_of(module: str) -> int | None:
    best = None
    for prefix in sorted(FLOORS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            best = FLOORS[prefix]
            break
    return best
