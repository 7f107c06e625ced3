"""Per-module outputs of a .pte's program in the ExecuTorch runtime, for drift localisation
(ETRecord + ETDump + Inspector)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mbv3_mobile.export.executorch.lower import _LAYOUT_OPS, _lowering_error
from mbv3_mobile.export.torch_export import ExportError, _node_module, _op_name


@torch.no_grad()
def debug_module_outputs(program, image: torch.Tensor) -> dict[str, np.ndarray]:
    """{nn.Module path: its output} for one image, from `program` (the ExportedProgram a .pte is
    lowered from) running in the ExecuTorch runtime, for drift localisation (see `DebugProgram`)."""
    return DebugProgram(program)(image)


class DebugProgram:
    """`program` lowered once for per-module outputs, then run per picture.

    The shipped .pte is one XNNPACK delegate: the runtime sees only its final output. So the same
    program is lowered again with `XnnpackPartitioner(per_op_mode=True)` (each op, or small fused
    group, its own XNNPACK delegate: the same kernels, minus cross-op fusion) and an ETRecord, run
    with ETDump and a debug buffer, and read back with the Inspector: each delegate call's output,
    keyed by debug handles. A module's output is the output of the last compute node inside it in
    the ETRecord's edge graph (nn_module_stack); a module whose last node's output is not
    observable (int8, or inside a fused group) is left out rather than guessed. A dequantize's
    float value is its quantized producer's output."""

    def __init__(self, program) -> None:
        import tempfile

        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        try:
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner(per_op_mode=True)],
                                               generate_etrecord=True)
            manager = edge.to_executorch()
            etrecord = manager.get_etrecord()
        except Exception as exc:  # noqa: BLE001 - EXIR raises many types
            raise _lowering_error(exc, "per-op lowering for drift localisation", program) from exc
        graph = [n for n in etrecord.edge_dialect_program.graph.nodes
                 if n.op == "call_function" and isinstance(n.meta.get("debug_handle"), int)]
        self.by_handle: dict[int, list[torch.fx.Node]] = {}  # a handle can be shared (an op and its quantize)
        for n in graph:
            self.by_handle.setdefault(n.meta["debug_handle"], []).append(n)
        self.owners: dict[torch.fx.Node, list[str]] = {}  # node -> the modules whose output it is
        for module, node in _last_node_per_module(graph).items():
            self.owners.setdefault(node, []).append(module)
        self._dir = tempfile.TemporaryDirectory()  # removed with this object
        self.pte, self.record = str(Path(self._dir.name) / "debug.pte"), str(Path(self._dir.name) / "etrecord.bin")
        Path(self.pte).write_bytes(manager.buffer)
        # The Inspector resolves instruction -> debug handle only from a serialised ETRecord (the
        # in-memory one lacks the handle maps).
        etrecord.save(self.record)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> dict[str, np.ndarray]:
        import tempfile

        from executorch.devtools import Inspector
        from executorch.extension.pybindings.portable_lib import _load_for_executorch

        with tempfile.TemporaryDirectory() as tmp:
            etdump, debug = str(Path(tmp) / "run.etdp"), str(Path(tmp) / "debug.bin")
            runtime = _load_for_executorch(self.pte, enable_etdump=True, debug_buffer_size=256 << 20)
            runtime.forward((image[:1].float().contiguous(),))
            runtime.write_etdump_result_to_file(etdump, debug)
            inspector = Inspector(etdump_path=etdump, etrecord=self.record, debug_buffer_path=debug)
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
                if not isinstance(value, torch.Tensor) or not value.is_floating_point() or max(handles) not in self.by_handle:
                    continue
                same = self.by_handle[max(handles)]
                compute = [n for n in same if not _is_qdq(n)]
                for module in self.owners.get(compute[-1] if compute else _quantized_source(same[-1]), []):
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

