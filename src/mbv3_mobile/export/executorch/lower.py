"""ExecuTorch / XNNPACK lowering: ExportedProgram -> to_edge_transform_and_lower(XnnpackPartitioner)
-> delegation gate -> to_executorch -> .pte bytes (written atomically)."""

from __future__ import annotations

import operator
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mbv3_mobile.core.atomic import atomic_path
from mbv3_mobile.graph import (
    LAYOUT_OPS,
    ExportError,
    describe_module,
    export_program,
    lowering_error,
    node_module,
    op_name,
)


class DelegationError(ExportError):
    """Compute ops stayed outside the XNNPACK delegate; `.report` holds the full DelegationReport."""

    def __init__(self, message: str, report: DelegationReport) -> None:
        first = report.violations[0] if report.violations else {}
        super().__init__(message, op=first.get("op"), module=first.get("module"))
        self.report = report



@dataclass
class DelegationReport:
    """What ran where after XNNPACK partitioning (from executorch's get_delegation_info)."""

    delegated_subgraphs: int
    delegated_nodes: int
    non_delegated_nodes: int
    by_op: dict[str, dict[str, int]]  # op type -> {"delegated": n, "non_delegated": m}
    outside: list[dict] = field(default_factory=list)  # every node outside: op, node, module, allowed, why

    @property
    def violations(self) -> list[dict]:
        return [o for o in self.outside if not o["allowed"]]

    @property
    def ok(self) -> bool:
        return self.delegated_subgraphs >= 1 and not self.violations

    def to_dict(self) -> dict:
        return {
            "delegated_subgraphs": self.delegated_subgraphs,
            "delegated_nodes": self.delegated_nodes,
            "non_delegated_nodes": self.non_delegated_nodes,
            "non_delegated_compute_ops": [f"{v['op']} in {describe_module(v['module'], v['module_class'])}" for v in self.violations],
            "outside_allowed": sorted({o["op"] for o in self.outside if o["allowed"]}),
            "by_op": self.by_op,
        }

    def summary(self) -> str:
        line = (f"{self.delegated_subgraphs} XNNPACK delegate(s) holding {self.delegated_nodes} nodes; "
                f"{self.non_delegated_nodes} nodes outside")
        allowed = [o for o in self.outside if o["allowed"]]
        if allowed:
            line += f" ({len(allowed)} allowed: {', '.join(sorted({o['op'] for o in allowed}))})"
        if self.violations:
            line += f"; NOT delegated compute: {', '.join(sorted({v['op'] for v in self.violations}))}"
        return line


def delegation_report(edge_program) -> DelegationReport:
    """Delegation report for a lowered program (EdgeProgramManager, ExportedProgram or GraphModule),
    to be taken *before* to_executorch (which rewrites the graph in place)."""
    from executorch.devtools.backend_debug import get_delegation_info

    if hasattr(edge_program, "exported_program"):
        edge_program = edge_program.exported_program()
    gm = edge_program.graph_module if hasattr(edge_program, "graph_module") else edge_program
    info = get_delegation_info(gm)
    by_op = {
        op: {"delegated": b.delegated, "non_delegated": b.non_delegated}
        for op, b in sorted(info.delegation_by_operator.items())
    }
    outside = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.name.startswith("executorch_call_delegate"):
            continue
        op = op_name(node.target)
        allowed, why = False, "compute op outside the XNNPACK delegate"
        if node.target is operator.getitem:
            allowed, why = True, "delegate output unpacking"
        elif op in LAYOUT_OPS and _is_constant_input(node, edge_program):  # constants lifted out of decomposed ops
            allowed, why = True, "layout copy of a lifted constant"
        path, cls = node_module(node)
        outside.append({"op": op, "node": node.name, "module": path or "<unknown>", "module_class": cls,
                        "allowed": allowed, "why": why})
    return DelegationReport(info.num_delegated_subgraphs, info.num_delegated_nodes, info.num_non_delegated_nodes,
                            by_op, outside)


def _is_constant_input(node: torch.fx.Node, program) -> bool:
    src = node.args[0] if node.args else None
    if not isinstance(src, torch.fx.Node):
        return False
    if src.op == "get_attr":
        return True
    if src.op != "placeholder":
        return False
    sig = getattr(program, "graph_signature", None)
    if sig is None:
        return False
    return src.name not in set(sig.user_inputs)


def check_delegation(report: DelegationReport) -> DelegationReport:
    """The delegation gate: every compute op must sit inside the XNNPACK delegate."""
    if report.delegated_subgraphs < 1:
        raise DelegationError("nothing was delegated to XNNPACK: the .pte would run on portable kernels only", report)
    if report.violations:
        listed = "; ".join(f"{v['op']} in {describe_module(v['module'], v['module_class'])}" for v in report.violations[:8])
        more = f" (+{len(report.violations) - 8} more)" if len(report.violations) > 8 else ""
        raise DelegationError(
            f"{len(report.violations)} compute op(s) not delegated to XNNPACK: {listed}{more}. XNNPACK does not "
            "support them here; replace the op/module or lower it differently.", report)
    return report


@dataclass
class LoweredProgram:
    """An ExecuTorch program lowered to XNNPACK: `.buffer` is the .pte bytes."""

    executorch: object  # executorch.exir.ExecutorchProgramManager
    delegation: DelegationReport
    lowering_seconds: float
    example_shape: tuple[int, ...]

    @property
    def buffer(self) -> bytes:
        return self.executorch.buffer


def lower(program, *, require_full_delegation: bool = True) -> LoweredProgram:
    """ExportedProgram -> XNNPACK-delegated ExecuTorch program.

    Raises ExportError (op + module path) if the lowering fails, and DelegationError if a compute
    op stays outside the delegate and `require_full_delegation` (the report is on the error)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    t0 = time.perf_counter()
    stage = "to_edge_transform_and_lower"
    try:
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        report = delegation_report(edge)
        if require_full_delegation:
            check_delegation(report)
        stage = "to_executorch"
        et = edge.to_executorch()
        _ = et.buffer  # serialise now, so failures surface here
    except DelegationError:
        raise
    except Exception as exc:  # noqa: BLE001 - EXIR raises many types
        raise lowering_error(exc, stage, program) from exc
    example = [s for s in program.graph_signature.user_inputs]
    shape = ()
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in example and "val" in node.meta:
            shape = tuple(int(d) for d in node.meta["val"].shape)
            break
    return LoweredProgram(et, report, time.perf_counter() - t0, shape)


def export_to_executorch(model: nn.Module, example: torch.Tensor, *, require_full_delegation: bool = True) -> LoweredProgram:
    """One call: torch.export at `example`'s (fixed) shape, lower to XNNPACK, delegation gate.

    `model` is an eager fp32 model (put it in eval mode) or a converted PT2E int8 GraphModule
    from `mbv3_mobile.quantize`. Use a batch-1 example for the app artifact."""
    if isinstance(model, nn.Module) and not isinstance(model, torch.fx.GraphModule) and model.training:
        raise ExportError("the model is in training mode; call model.eval() before exporting")
    with torch.no_grad():
        return lower(export_program(model, example), require_full_delegation=require_full_delegation)


def _as_bytes(program) -> bytes:
    if isinstance(program, LoweredProgram):
        return program.buffer
    if isinstance(program, (bytes, bytearray)):
        return bytes(program)
    if isinstance(program, (str, os.PathLike)):
        return Path(program).read_bytes()
    if hasattr(program, "buffer"):
        return program.buffer
    raise TypeError(f"expected a LoweredProgram, .pte bytes or a path, got {type(program).__name__}")


def write_pte(program, path: str | os.PathLike) -> Path:
    """Write .pte bytes (LoweredProgram, ExecutorchProgramManager or bytes) atomically."""
    data = _as_bytes(program)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)


