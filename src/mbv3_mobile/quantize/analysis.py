"""Where int8 loses fidelity: per-module outputs of a converted PT2E graph, to set against eager
fp32 (`quantize.mixed` ranks layers with them; runtimes' per-module outputs are compared in
`verify.sensitivity`). Reads the graph itself (PT2E keeps every node's `nn_module_stack`), so no
runtime is involved: the reference q/dq math that XNNPACK implements.

A module's int8 output is the value its consumers see: its last compute node's output after the
quantize -> dequantize pair that follows it, so the output rounding of each layer is counted.
"""

from __future__ import annotations

import torch


def _is_qdq(node: torch.fx.Node) -> bool:
    return "quantize_per_" in str(node.target) or "dequantize_per_" in str(node.target)


def _module_path(node: torch.fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    import re

    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"\[['\"]?([^\]'\"]+)['\"]?\]", r".\1", path)
    return path.strip(".") or None


def _after_requant(node: torch.fx.Node) -> torch.fx.Node:
    """The dequantize that follows `node`'s re-quantization, when there is one (its consumers' view)."""
    users = list(node.users)
    if len(users) == 1 and "quantize_per_" in str(users[0].target) and "dequantize" not in str(users[0].target):
        deq = [u for u in users[0].users if "dequantize_per_" in str(u.target)]
        if deq:
            return deq[0]
    return node


def graph_module_outputs(graph: torch.fx.GraphModule, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """{module path: output} of a converted PT2E graph for a batch, each module's output taken after
    its own output quantization."""
    last: dict[str, torch.fx.Node] = {}
    for node in graph.graph.nodes:
        if node.op != "call_function" or _is_qdq(node):
            continue
        path = _module_path(node)
        if not path:
            continue
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            last[".".join(parts[:i])] = node
    wanted = {_after_requant(n): [] for n in last.values()}
    for module, node in last.items():
        wanted[_after_requant(node)].append(module)
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
