"""ExecuTorch / XNNPACK (Android): torch.export -> to_edge_transform_and_lower(XnnpackPartitioner)
-> to_executorch -> .pte, a delegation gate, BundledProgram (.bpte) build and on-runtime
verification, and running a .pte on real images in the ExecuTorch Python runtime.

    lowered = export_to_executorch(model, example)             # fp32 eager model or a PT2E int8 GraphModule
    write_pte(lowered, "model.pte")                             # atomic
    logits = run_pte("model.pte", images)                       # ExecuTorch runtime, fixed batch
    parity = parity_report(eager_logits, logits)                # {'max_abs_diff', 'top1_agreement', ...}
    write_bundled_program("model.bpte", lowered, cases, expected)
    verify_bundled_program("model.bpte")                        # raises BundleVerificationError

Batch size: a program is exported for the batch of its example input (static shapes). The app
artifact uses batch 1, and evaluation runs that same artifact image by image: a MobileNetV3-Small
@32 takes ~0.2 ms per call in the runtime here (10k test images in ~2-3 s), so the int8 figures
are measured on exactly the file that ships and no separate batched program is needed.
`run_pte` reads the program's batch from its metadata and pads the last chunk, so a batched
program works the same way if one is ever wanted for a large model.

Failures inside torch.export or the ExecuTorch lowering raise `ExportError` (a `UserError`) with
one short message naming the op and the nn.Module path; the original exception stays chained.
"""

from __future__ import annotations

import operator
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic import atomic_path
from .errors import UserError
from .preprocess import check_model_input

# Outside the delegate these are not compute: tuple unpacking of the delegate's outputs, and
# dim-order (layout) copies of constants lifted out of decomposed ops (e.g. hardsigmoid's 3 and 6).
_LAYOUT_OPS = {"dim_order_ops._to_dim_order_copy.default", "dim_order_ops._clone_dim_order.default",
               "aten._to_copy.default", "aten.clone.default"}
_MAX_MESSAGE = 400


class ExportError(UserError):
    """torch.export or the ExecuTorch lowering failed; the message names the op and module path."""

    def __init__(self, message: str, *, op: str | None = None, module: str | None = None) -> None:
        super().__init__(message)
        self.op, self.module = op, module


class DelegationError(ExportError):
    """Compute ops stayed outside the XNNPACK delegate; `.report` holds the full DelegationReport."""

    def __init__(self, message: str, report: DelegationReport) -> None:
        first = report.violations[0] if report.violations else {}
        super().__init__(message, op=first.get("op"), module=first.get("module"))
        self.report = report


class BundleVerificationError(UserError):
    """A BundledProgram's outputs in the ExecuTorch runtime do not match its expected outputs."""


class ParityError(UserError):
    """A .pte's outputs differ from the reference more than the gate allows."""


# ---------------------------------------------------------------- error translation


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 3] + "..."
    return type(exc).__name__


def _exception_chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


_QUALIFIED_OP_RE = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*::[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)")
_DOTTED_OP_RE = re.compile(r"\b((?:aten|quantized_decomposed|dim_order_ops|torchvision)\.[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)")


def _op_in_text(text: str) -> str | None:
    """The first operator named in an error message ('ns::op[.overload]' or 'aten.op[.overload]')."""
    for regex in (_QUALIFIED_OP_RE, _DOTTED_OP_RE):
        m = regex.search(text)
        if m:
            return m.group(1).replace("::", ".")
    return None


_TORCH_DIR = os.path.dirname(torch.__file__)


def _module_frame(exc: BaseException, model: nn.Module | None) -> tuple[str | None, str | None]:
    """(module path, 'file:line `code`') for the innermost forward() of `model` in the traceback:
    the path of the innermost named submodule whose code was running, and the innermost line of
    code outside torch itself (the user's line)."""
    if model is None:
        return None, None
    names = {id(m): name for name, m in model.named_modules()}
    for e in _exception_chain(exc):
        path = where = None
        for frame_summary, (frame, _) in zip(traceback.extract_tb(e.__traceback__), traceback.walk_tb(e.__traceback__)):
            owner = frame.f_locals.get("self")
            if isinstance(owner, nn.Module) and id(owner) in names:
                path = names[id(owner)] or f"<root {type(owner).__name__}>"
                if not frame_summary.filename.startswith(_TORCH_DIR):
                    where = f"{os.path.basename(frame_summary.filename)}:{frame_summary.lineno} `{(frame_summary.line or '').strip()}`"
        if path is not None:
            return path, where
    return None, None


class _quiet_export:
    """torch.export prints the partial FX graph to stderr on failure (torch/export/_trace.py) and
    logs whole graphs on data-dependent errors; the ExportError says what matters. Capture stderr
    and keep those loggers at ERROR while exporting; on success the captured text is passed on."""

    _NAMES = ("torch.fx.experimental.symbolic_shapes", "torch._export", "torch.export")

    def __enter__(self):
        import contextlib
        import io
        import logging

        self._saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in self._NAMES]
        for logger, _ in self._saved:
            logger.setLevel(logging.ERROR)
        self._buffer = io.StringIO()
        self._redirect = contextlib.redirect_stderr(self._buffer)
        self._redirect.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        import sys

        self._redirect.__exit__(exc_type, exc, tb)
        for logger, level in self._saved:
            logger.setLevel(level)
        if exc_type is None and self._buffer.getvalue():
            sys.stderr.write(self._buffer.getvalue())
        return False


_CALL_RE = re.compile(r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.+)')


def _user_call_site(exc: BaseException) -> str | None:
    """'file:line `code`' from torch.export's "The following call raised this error" section."""
    for e in _exception_chain(exc):
        found = _CALL_RE.findall(str(e))
        if found:
            filename, line, _, code = found[-1]
            return f"{os.path.basename(filename)}:{line} `{code.strip()}`"
    return None


def _node_module(node: torch.fx.Node) -> tuple[str | None, str | None]:
    """(module path, module class name) of the innermost nn.Module a graph node came from."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None, None
    path, cls = list(stack.values())[-1]
    cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
    return _clean_path(path) or "<root>", cls_name.rsplit(".", 1)[-1]


def _where(path: str | None, cls: str | None) -> str:
    return f"{path} ({cls})" if path and cls else (path or "<unknown module>")


def _clean_path(path: str) -> str:
    # strict-mode export spells paths like "L['self'].features[3].block"; normalise to "features.3.block"
    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"\[['\"]?([^\]'\"]+)['\"]?\]", r".\1", path)
    return path.strip(".")


def _op_name(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__name__", str(target))


def _nodes_for_op(program, op: str) -> list[torch.fx.Node]:
    if program is None:
        return []
    graph = program.graph_module.graph if hasattr(program, "graph_module") else program.graph
    short = op.split(".")
    return [
        n for n in graph.nodes
        if n.op == "call_function" and (_op_name(n.target) == op or _op_name(n.target).split(".")[:2] == short[:2])
    ]


# ---------------------------------------------------------------- export and lowering


def export_program(model: nn.Module, example: torch.Tensor, *, dynamic_batch: int | None = None):
    """torch.export (non-strict) of `model` for input `example`; static shapes unless
    `dynamic_batch` gives the largest batch. Failures raise ExportError naming op and module."""
    dynamic_shapes = None
    if dynamic_batch is not None:
        from torch.export import Dim

        dynamic_shapes = ({0: Dim("batch", min=1, max=dynamic_batch)},)
    try:
        with _quiet_export():
            return torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as exc:  # noqa: BLE001 - torch.export raises many unrelated types
        path, where = _module_frame(exc, model)
        where = _user_call_site(exc) or where
        text = " ".join(str(e) for e in _exception_chain(exc))
        op = _op_in_text(text)
        parts = ["torch.export failed"]
        if path is not None:
            parts.append(f" in module '{path}'")
        if op:
            parts.append(f" at op {op}")
        if where:
            parts.append(f" ({where})")
        raise ExportError(f"{''.join(parts)}: {type(exc).__name__}: {_first_line(exc)}", op=op, module=path) from exc


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
            "non_delegated_compute_ops": [f"{v['op']} in {_where(v['module'], v['module_class'])}" for v in self.violations],
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
        op = _op_name(node.target)
        allowed, why = False, "compute op outside the XNNPACK delegate"
        if node.target is operator.getitem:
            allowed, why = True, "delegate output unpacking"
        elif op in _LAYOUT_OPS and _is_constant_input(node, edge_program):
            allowed, why = True, "layout copy of a lifted constant"
        path, cls = _node_module(node)
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
        listed = "; ".join(f"{v['op']} in {_where(v['module'], v['module_class'])}" for v in report.violations[:8])
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
        raise _lowering_error(exc, stage, program) from exc
    example = [s for s in program.graph_signature.user_inputs]
    shape = ()
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in example and "val" in node.meta:
            shape = tuple(int(d) for d in node.meta["val"].shape)
            break
    return LoweredProgram(et, report, time.perf_counter() - t0, shape)


def _lowering_error(exc: BaseException, stage: str, program) -> ExportError:
    text = " ".join(str(e) for e in _exception_chain(exc))
    op = _op_in_text(text)
    module = cls = None
    if op:
        nodes = _nodes_for_op(program, op)
        if nodes:
            module, cls = _node_module(nodes[0])
    msg = f"ExecuTorch lowering failed in {stage}"
    if op:
        msg += f" at op {op}"
    if module:
        msg += f" in module {_where(module, cls)}"
    return ExportError(f"{msg}: {type(exc).__name__}: {_first_line(exc)}", op=op, module=module)


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


# ---------------------------------------------------------------- running


def _load_method(program):
    from executorch.runtime import Runtime

    data = _as_bytes(program)
    try:
        loaded = Runtime.get().load_program(data)
        method = loaded.load_method("forward")
        # executorch.runtime.Method keeps no reference to its Program (which owns the .pte bytes):
        # once the Program is collected, execute() reads freed memory and segfaults at random.
        method._keep_program_alive = loaded
        return method
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"the ExecuTorch runtime cannot load this program: {_first_line(exc)}") from exc


def program_input_shape(program) -> tuple[int, ...]:
    """The fixed input shape (N, C, H, W) recorded in a .pte."""
    return tuple(_load_method(program).metadata.input_tensor_meta(0).sizes())


@torch.no_grad()
def run_pte(program, images: torch.Tensor, *, progress: bool = False) -> torch.Tensor:
    """Logits for normalised float images (N, 3, R, R) from the ExecuTorch Python runtime.

    `program`: LoweredProgram, .pte bytes or path. The program's fixed batch B is read from its
    metadata; images are fed in chunks of B (the last one padded, padding dropped)."""
    method = _load_method(program)
    shape = tuple(method.metadata.input_tensor_meta(0).sizes())
    check_model_input(images, shape, "this .pte")
    batch = shape[0]
    images = images.float().contiguous()
    outs = []
    starts = range(0, len(images), batch)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="ExecuTorch runtime", leave=False, dynamic_ncols=True)
    for s in starts:
        x = images[s : s + batch]
        n = len(x)
        if n < batch:
            x = torch.cat([x, x[-1:].expand(batch - n, *x.shape[1:])]).contiguous()
        outs.append(method.execute([x])[0][:n].clone())
    return torch.cat(outs)


@torch.no_grad()
def debug_module_outputs(program, image: torch.Tensor) -> dict[str, np.ndarray]:
    """{nn.Module path: its output} for one image, from `program` (the ExportedProgram a .pte is
    lowered from) running in the ExecuTorch runtime, for drift localisation.

    The shipped .pte is one XNNPACK delegate: the runtime sees only its final output. So the same
    program is lowered again with `XnnpackPartitioner(per_op_mode=True)` (each op, or small fused
    group, its own XNNPACK delegate: the same kernels, minus cross-op fusion) and an ETRecord, run
    once with ETDump and a debug buffer, and read back with the Inspector: each delegate call's
    output, keyed by debug handles. A module's output is the output of the last compute node inside
    it in the ETRecord's edge graph (nn_module_stack); a module whose last node's output is not
    observable (int8, or inside a fused group) is left out rather than guessed. A dequantize's
    float value is its quantized producer's output."""
    import tempfile

    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools import Inspector
    from executorch.exir import to_edge_transform_and_lower
    from executorch.extension.pybindings.portable_lib import _load_for_executorch

    try:
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner(per_op_mode=True)], generate_etrecord=True)
        manager = edge.to_executorch()
        etrecord = manager.get_etrecord()
    except Exception as exc:  # noqa: BLE001 - EXIR raises many types
        raise _lowering_error(exc, "per-op lowering for drift localisation", program) from exc
    graph = [n for n in etrecord.edge_dialect_program.graph.nodes
             if n.op == "call_function" and isinstance(n.meta.get("debug_handle"), int)]
    by_handle: dict[int, list[torch.fx.Node]] = {}  # a handle can be shared (an op and its quantize)
    for n in graph:
        by_handle.setdefault(n.meta["debug_handle"], []).append(n)
    owners: dict[torch.fx.Node, list[str]] = {}  # node -> the modules whose output it is
    for module, node in _last_node_per_module(graph).items():
        owners.setdefault(node, []).append(module)
    with tempfile.TemporaryDirectory() as tmp:
        pte, etdump, debug, record = (str(Path(tmp) / n) for n in ("debug.pte", "run.etdp", "debug.bin", "etrecord.bin"))
        Path(pte).write_bytes(manager.buffer)
        # The Inspector resolves instruction -> debug handle only from a serialised ETRecord (the
        # in-memory one lacks the handle maps).
        etrecord.save(record)
        runtime = _load_for_executorch(pte, enable_etdump=True, debug_buffer_size=256 << 20)
        runtime.forward((image[:1].float().contiguous(),))
        runtime.write_etdump_result_to_file(etdump, debug)
        inspector = Inspector(etdump_path=etdump, etrecord=record, debug_buffer_path=debug)
    outputs: dict[str, np.ndarray] = {}
    for block in inspector.event_blocks:
        for event in block.events:  # in execution order: a later value for the same node wins
            handles = event.debug_handles
            # OPERATOR_CALL wraps the native call logged just before it: the same value twice.
            if handles is None or not event.debug_data or event.name == "OPERATOR_CALL":
                continue
            handles = [handles] if isinstance(handles, int) else list(handles)
            # An instruction's logged values are its arguments in order; the output is the last.
            value = event.debug_data[-1]
            if not isinstance(value, torch.Tensor) or not value.is_floating_point() or max(handles) not in by_handle:
                continue
            same = by_handle[max(handles)]
            compute = [n for n in same if not _is_qdq(n)]
            for module in owners.get(compute[-1] if compute else _quantized_source(same[-1]), []):
                outputs[module] = value.detach().float().numpy().copy()
    if not outputs:
        raise ExportError("the ExecuTorch runtime logged no intermediate outputs (ETDump debug buffer empty)")
    return outputs


def _is_qdq(node: torch.fx.Node) -> bool:
    return "quantize_per_" in str(node.target)


def _last_node_per_module(nodes) -> dict[str, torch.fx.Node]:
    """The last compute node (graph order; q/dq and layout copies are not compute) inside each
    module and each of its ancestors: its output is the module's output."""
    last: dict[str, torch.fx.Node] = {}
    for node in nodes:
        if _is_qdq(node) or _op_name(node.target) in _LAYOUT_OPS:
            continue
        path = _node_module(node)[0]
        if not path or path == "<root>":
            continue
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            last[".".join(parts[:i])] = node
    return last


def _quantized_source(node: torch.fx.Node) -> torch.fx.Node:
    """The node whose value a (de)quantize chain carries. PT2E gives a dequantize the module stack
    of its consumer, but its value is the producer's output (after int8 rounding)."""
    while _is_qdq(node) and node.args and isinstance(node.args[0], torch.fx.Node):
        node = node.args[0]
    return node


def run_pte_on_dataset(program, dataset, preprocessing, *, chunk: int = 1000, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) for a whole uint8 dataset (e.g. the 10k Fashion-MNIST test set) in the runtime."""
    from .data import BatchTransform

    transform = BatchTransform(preprocessing)
    outs = []
    for s in range(0, len(dataset), chunk):
        outs.append(run_pte(program, transform(dataset.images[s : s + chunk]), progress=progress))
    return torch.cat(outs), dataset.labels.clone()


def parity_report(reference_logits: torch.Tensor, pte_logits: torch.Tensor) -> dict:
    """max |Δlogit| and top-1 agreement (%) between a reference (eager) and a .pte."""
    if reference_logits.shape != pte_logits.shape:
        raise ParityError(f"shapes differ: reference {tuple(reference_logits.shape)} vs .pte {tuple(pte_logits.shape)}")
    diff = (reference_logits.float() - pte_logits.float()).abs()
    return {
        "images": len(reference_logits),
        "max_abs_diff": diff.max().item(),
        "mean_abs_diff": diff.mean().item(),
        "top1_agreement": 100 * (reference_logits.argmax(1) == pte_logits.argmax(1)).float().mean().item(),
    }


def check_parity(report: dict, *, max_abs_diff: float = 1e-4, min_top1_agreement: float = 100.0, what: str = "fp32 .pte") -> dict:
    """Raise ParityError unless max |Δlogit| <= max_abs_diff and top-1 agreement >= the minimum (%)."""
    if report["max_abs_diff"] > max_abs_diff or report["top1_agreement"] < min_top1_agreement:
        raise ParityError(
            f"{what} vs eager on {report['images']} images: max |Δlogit| {report['max_abs_diff']:.3g} "
            f"(gate {max_abs_diff:g}), top-1 agreement {report['top1_agreement']:.2f} % (gate {min_top1_agreement:g} %)"
        )
    return report


# ---------------------------------------------------------------- BundledProgram (.bpte)


def bundle_program(program, inputs: torch.Tensor, expected_outputs: torch.Tensor) -> bytes:
    """A BundledProgram: the .pte plus test cases (inputs, expected outputs), serialised to bytes.

    `program`: LoweredProgram, ExecutorchProgramManager, or the .pte itself (bytes or path: the
    bundle then holds exactly those bytes, no re-lowering). `inputs` (N, 3, R, R) real images are
    cut into cases of the program's fixed batch; `expected_outputs` (N, classes) are the matching
    reference outputs (eager logits for fp32; for int8, the .pte's own outputs from `run_pte`,
    i.e. golden outputs that catch a runtime/device regression)."""
    import tempfile

    from executorch.devtools import BundledProgram
    from executorch.devtools.bundled_program.config import MethodTestCase, MethodTestSuite
    from executorch.devtools.bundled_program.serialize import serialize_from_bundled_program_to_flatbuffer

    if isinstance(program, (bytes, bytearray, str, os.PathLike)):
        manager, pte_bytes = None, _as_bytes(program)
    else:  # LoweredProgram or ExecutorchProgramManager
        manager, pte_bytes = (program.executorch if isinstance(program, LoweredProgram) else program), None
    meta = _load_method(pte_bytes if pte_bytes is not None else manager.buffer).metadata
    in_shape = tuple(meta.input_tensor_meta(0).sizes())
    out_shape = tuple(meta.output_tensor_meta(0).sizes())
    batch = in_shape[0]
    if (len(inputs) == 0 or len(inputs) != len(expected_outputs) or len(inputs) % batch
            or tuple(inputs.shape[1:]) != in_shape[1:] or tuple(expected_outputs.shape[1:]) != out_shape[1:]):
        raise ExportError(
            f"bundle cases do not fit the program: inputs {tuple(inputs.shape)} / expected outputs "
            f"{tuple(expected_outputs.shape)} for a program taking {in_shape} and returning {out_shape}"
        )
    cases = [
        MethodTestCase(inputs=[inputs[i : i + batch].float().contiguous()],
                       expected_outputs=[expected_outputs[i : i + batch].float().contiguous()])
        for i in range(0, len(inputs), batch)
    ]
    suites = [MethodTestSuite(method_name="forward", test_cases=cases)]
    try:
        if pte_bytes is None:
            return serialize_from_bundled_program_to_flatbuffer(BundledProgram(manager, suites))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "program.pte"
            path.write_bytes(pte_bytes)
            return serialize_from_bundled_program_to_flatbuffer(BundledProgram(None, suites, pte_file_path=str(path)))
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"cannot build the BundledProgram: {type(exc).__name__}: {_first_line(exc)}") from exc


def write_bundled_program(path: str | os.PathLike, program, inputs: torch.Tensor, expected_outputs: torch.Tensor) -> Path:
    """`bundle_program` written atomically to `path` (.bpte)."""
    data = bundle_program(program, inputs, expected_outputs)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)


def verify_bundled_program(bundle, *, num_cases: int | None = None, rtol: float = 1e-5, atol: float = 1e-4) -> dict:
    """Run every bundled test case in the ExecuTorch runtime and check it against its expected output
    (|actual - expected| <= atol + rtol * |expected|, ExecuTorch's own check).

    `bundle`: .bpte bytes or path. `num_cases` defaults to the count stored in the bundle.
    Returns {'cases': n, 'rtol', 'atol'}; raises BundleVerificationError on the first mismatch."""
    from executorch.extension.pybindings import portable_lib

    data = _as_bytes(bundle)
    if num_cases is None:
        num_cases = bundled_case_count(data)
    if num_cases < 1:
        raise BundleVerificationError("the bundled program holds no test cases")
    try:
        module = portable_lib._load_bundled_program_from_buffer(data)
    except Exception as exc:  # noqa: BLE001
        raise BundleVerificationError(f"the ExecuTorch runtime cannot load the bundle: {_first_line(exc)}") from exc
    for i in range(num_cases):
        try:
            module.verify_result_with_bundled_expected_output("forward", i, rtol, atol)
        except Exception as exc:  # noqa: BLE001 - pybind raises RuntimeError with a status code
            raise BundleVerificationError(
                f"bundled test case {i}/{num_cases} failed in the ExecuTorch runtime "
                f"(rtol={rtol:g}, atol={atol:g}): {_first_line(exc)}"
            ) from exc
    return {"cases": num_cases, "rtol": rtol, "atol": atol}


def bundled_case_count(bundle) -> int:
    """Number of test cases of the 'forward' suite in a .bpte (read from its flatbuffer)."""
    from executorch.devtools.bundled_program.serialize import _bundled_program_file_identifier

    data = _as_bytes(bundle)
    if len(data) < 8 or data[4:8] != _bundled_program_file_identifier():
        raise BundleVerificationError(
            f"not a BundledProgram (.bpte): file identifier {data[4:8]!r}, expected {_bundled_program_file_identifier()!r}"
        )
    return _flatbuffer_case_count(data)


def _flatbuffer_case_count(data: bytes) -> int:
    """Walk the bundled_program flatbuffer just far enough to count test cases (no JSON round trip:
    executorch's deserializer converts the whole embedded program to JSON, slow for real models).

    Schema (bundled_program_schema.fbs): table BundledProgram { version: uint; method_test_suites:
    [BundledMethodTestSuite]; program: [ubyte]; }  table BundledMethodTestSuite { method_name: string;
    test_cases: [BundledMethodTestCase]; }"""
    import struct

    def u32(off: int) -> int:
        return struct.unpack_from("<I", data, off)[0]

    def i32(off: int) -> int:
        return struct.unpack_from("<i", data, off)[0]

    def field_pos(table: int, index: int) -> int | None:
        vtable = table - i32(table)
        vt_len = struct.unpack_from("<H", data, vtable)[0]
        slot = 4 + 2 * index
        if slot >= vt_len:
            return None
        rel = struct.unpack_from("<H", data, vtable + slot)[0]
        return table + rel if rel else None

    try:
        root = u32(0)
        suites_pos = field_pos(root, 1)
        if suites_pos is None:
            return 0
        suites = suites_pos + u32(suites_pos)
        total = 0
        for k in range(u32(suites)):
            elem = suites + 4 + 4 * k
            suite = elem + u32(elem)
            name_pos = field_pos(suite, 0)
            name = ""
            if name_pos is not None:
                s = name_pos + u32(name_pos)
                name = data[s + 4 : s + 4 + u32(s)].decode()
            cases_pos = field_pos(suite, 1)
            if name == "forward" and cases_pos is not None:
                total += u32(cases_pos + u32(cases_pos))
        return total
    except (struct.error, UnicodeDecodeError, IndexError) as exc:
        raise BundleVerificationError(f"not a BundledProgram flatbuffer: {exc}") from exc
