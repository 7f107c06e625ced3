"""The ExecuTorch Core ML delegate `.pte` (for apps that run ExecuTorch on iOS): built on Linux,
runnable only where ExecuTorch has CoreMLBackend (iOS/macOS builds), not in the pip runtime."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mbv3_mobile.core.atomic import atomic_path
from mbv3_mobile.export.coreml.convert import (
    DEFAULT_TARGET,
    PRECISIONS,
    CoreMLExportError,
    _ct_target,
    check_convertible,
    check_target,
)


def build_executorch_coreml(
    model: nn.Module,
    out_path: str | os.PathLike,
    *,
    resolution: int,
    precision: str = "fp16",
    deployment_target: Any = DEFAULT_TARGET,
) -> dict:
    """Lower the bare network (normalised NCHW float32 (1, 3, R, R) in, logits out) to an ExecuTorch
    `.pte` with the Core ML delegate, write it atomically, and report the delegation.

    Builds on Linux; running it needs an ExecuTorch runtime with CoreMLBackend (iOS/macOS) -- the
    pip runtime here registers no CoreMLBackend. Returns {"path", "size_bytes", "seconds",
    "delegated_nodes", "non_delegated_nodes", "delegate_subgraphs", "non_delegated_ops", ...}.
    """
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    if precision not in PRECISIONS:
        raise CoreMLExportError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    target = check_target(deployment_target)
    out_path = Path(out_path)
    start = time.perf_counter()
    example = torch.rand(1, 3, resolution, resolution)
    with torch.no_grad():
        ep = torch.export.export(model.eval(), (example,))
    check_convertible(ep.run_decompositions({}))
    specs = CoreMLBackend.generate_compile_specs(
        minimum_deployment_target=_ct_target(target),
        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edge = to_edge_transform_and_lower(ep, partitioner=[CoreMLPartitioner(compile_specs=specs)])
        info = get_delegation_info(edge.exported_program().graph_module)
        program = edge.to_executorch()
    with atomic_path(out_path) as tmp:
        Path(tmp).write_bytes(program.buffer)
    return {
        "path": str(out_path),
        "size_bytes": out_path.stat().st_size,
        "seconds": round(time.perf_counter() - start, 3),
        "precision": precision,
        "deployment_target": target,
        "delegate_subgraphs": info.num_delegated_subgraphs,
        "delegated_nodes": info.num_delegated_nodes,
        "non_delegated_nodes": info.num_non_delegated_nodes,
        "non_delegated_ops": {k: v.non_delegated for k, v in info.delegation_by_operator.items() if v.non_delegated},
        "runs_here": False,
        "note": "needs an ExecuTorch runtime with CoreMLBackend (iOS/macOS); the pip runtime has none",
    }
