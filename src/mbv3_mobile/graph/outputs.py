"""Per-module outputs of a graph, to set against eager fp32 module by module.

`graph_module_outputs` runs a converted PT2E graph itself (no runtime: the reference q/dq math that
XNNPACK implements) and reads each module's output where its consumers see it: after the
quantize -> dequantize pair that follows its last compute node, so each layer's output rounding is
counted. `quantize.mixed` ranks layers with it; runtimes' own per-module outputs (ETDump, ONNX
node taps, the MIL interpreter) are compared in `verify.sensitivity` and `verify.drift`.
"""

from __future__ import annotations

import torch

from mbv3_mobile.graph.nodes import after_requant, last_compute_node_per_module


def graph_module_outputs(graph: torch.fx.GraphModule, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """{module path: output} of a converted PT2E graph for a batch."""
    last = last_compute_node_per_module(graph.graph.nodes)
    wanted: dict[torch.fx.Node, list[str]] = {}
    for module, node in last.items():
        wanted.setdefault(after_requant(node), []).append(module)
    values: dict[str, torch.Tensor] = {}

    class Capture(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n in wanted and isinstance(out, torch.Tensor):
                for module in wanted[n]:
                    values[module] = out.detach()
            return out

    with torch.no_grad():
        Capture(graph).run(images)
    return values
