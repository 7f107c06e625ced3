"""Per-module outputs of a .pte's program in the ExecuTorch runtime, for drift localisation
(ETRecord + ETDump + Inspector over `graph.PerOpLowering`)."""

from __future__ import annotations

import numpy as np
import torch

from mbv3_mobile.graph import ExportError, PerOpLowering, is_qdq, last_compute_node_per_module, quantized_source


@torch.no_grad()
def debug_module_outputs(program, image: torch.Tensor) -> dict[str, np.ndarray]:
    """{nn.Module path: its output} for one image, from `program` (the ExportedProgram a .pte is
    lowered from) running in the ExecuTorch runtime, for drift localisation (see `DebugProgram`)."""
    return DebugProgram(program)(image)


class DebugProgram:
    """`program` lowered once per op (`graph.PerOpLowering`), then run per picture with a debug
    buffer: each delegate call's output, keyed by debug handles. A module's output is the output of
    the last compute node inside it in the ETRecord's edge graph; a module whose last node's output
    is not observable (int8, or inside a fused group) is left out rather than guessed. A
    dequantize's float value is its quantized producer's output."""

    def __init__(self, program) -> None:
        self.lowered = PerOpLowering(program, what="per-op lowering for drift localisation")
        graph = [n for n in self.lowered.edge_graph.nodes
                 if n.op == "call_function" and isinstance(n.meta.get("debug_handle"), int)]
        self.owners: dict[torch.fx.Node, list[str]] = {}  # node -> the modules whose output it is
        for module, node in last_compute_node_per_module(graph).items():
            self.owners.setdefault(node, []).append(module)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> dict[str, np.ndarray]:
        inspector, _ = self.lowered.inspect(image, debug_buffer=True)
        by_handle = self.lowered.by_handle
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
                compute = [n for n in same if not is_qdq(n)]
                for module in self.owners.get(compute[-1] if compute else quantized_source(same[-1]), []):
                    outputs[module] = value.detach().float().numpy().copy()
        if not outputs:
            raise ExportError("the ExecuTorch runtime logged no intermediate outputs (ETDump debug buffer empty)")
        return outputs
