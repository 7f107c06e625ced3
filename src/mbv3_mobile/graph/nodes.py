"""Reading FX graph nodes: which nn.Module a node came from, what op it runs, whether it is a
quantize / dequantize step, and which node carries each module's output.

torch.export keeps, on every node, the stack of modules that were running when it was traced
(`nn_module_stack`); PT2E, EXIR and the exporters carry it forward, so these answers hold for an
ExportedProgram, a converted PT2E graph and an ExecuTorch edge graph alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, TypeVar

import torch

# Not compute: dim-order (layout) copies and clones that EXIR inserts around lifted constants and
# delegate boundaries. A module's output is never one of these.
LAYOUT_OPS = frozenset({"dim_order_ops._to_dim_order_copy.default", "dim_order_ops._clone_dim_order.default",
                        "aten._to_copy.default", "aten.clone.default"})

T = TypeVar("T")


def clean_path(path: str) -> str:
    """A module path as `named_modules()` spells it: strict-mode export writes
    "L['self'].features[3].block", non-strict "features.3.block"."""
    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"\[['\"]?([^\]'\"]+)['\"]?\]", r".\1", path)
    return path.strip(".")


def module_path(node: torch.fx.Node) -> str | None:
    """Path of the innermost nn.Module `node` came from; None for nodes of the top-level forward."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    return clean_path(list(stack.values())[-1][0]) or None


def module_class(node: torch.fx.Node) -> str | None:
    """Class name of the innermost nn.Module `node` came from."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    cls = list(stack.values())[-1][1]
    name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
    return name.rsplit(".", 1)[-1]


def node_module(node: torch.fx.Node) -> tuple[str | None, str | None]:
    """(module path, module class) of `node`; the path is "<root>" for the top-level forward and
    None when the node carries no module stack at all (a node a pass inserted)."""
    if not node.meta.get("nn_module_stack"):
        return None, None
    return module_path(node) or "<root>", module_class(node)


def describe_module(path: str | None, cls: str | None) -> str:
    """'features.3.block (InvertedResidual)', for messages."""
    return f"{path} ({cls})" if path and cls else (path or "<unknown module>")


def op_name(target: Any) -> str:
    """'aten.convolution.default' for an OpOverload, else the callable's name."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__name__", str(target))


def _target_text(node_or_name: torch.fx.Node | str) -> str:
    return node_or_name if isinstance(node_or_name, str) else str(node_or_name.target)


def is_quantize(node_or_name: torch.fx.Node | str) -> bool:
    text = _target_text(node_or_name)
    return "quantize_per_" in text and "dequantize_per_" not in text


def is_dequantize(node_or_name: torch.fx.Node | str) -> bool:
    return "dequantize_per_" in _target_text(node_or_name)


def is_qdq(node_or_name: torch.fx.Node | str) -> bool:
    """A quantize or dequantize step (PT2E's quantized_decomposed ops, per tensor or per channel),
    or the dynamic-quantization qparams it may come with; a node or an op name."""
    text = _target_text(node_or_name)
    return "quantize_per_" in text or "choose_qparams" in text


def is_conv_or_linear(node: torch.fx.Node) -> bool:
    """A convolution or linear call: the layers PT2E quantizes with weights."""
    return node.op == "call_function" and ("conv" in str(node.target) or "linear" in str(node.target))


def is_compute(node: torch.fx.Node) -> bool:
    """A call that computes a value: not a q/dq step and not a layout copy."""
    return node.op == "call_function" and not is_qdq(node) and op_name(node.target) not in LAYOUT_OPS


def last_per_module(items: Iterable[tuple[str | None, T]]) -> dict[str, T]:
    """(module path, value) pairs in program order -> {module: the last value produced inside it}.
    Every ancestor of a path is assigned too: a container's output is its last child's output."""
    out: dict[str, T] = {}
    for path, value in items:
        if not path or path == "<root>":
            continue
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            out[".".join(parts[:i])] = value
    return out


def last_compute_node_per_module(nodes: Iterable[torch.fx.Node]) -> dict[str, torch.fx.Node]:
    """The last compute node (graph order) inside each module and each of its ancestors: the node
    whose value is the module's output."""
    return last_per_module((module_path(n), n) for n in nodes if is_compute(n))


def quantized_source(node: torch.fx.Node) -> torch.fx.Node:
    """The node whose value a (de)quantize chain carries. PT2E gives a dequantize the module stack
    of its consumer, but its value is the producer's output (after int8 rounding)."""
    while is_qdq(node) and node.args and isinstance(node.args[0], torch.fx.Node):
        node = node.args[0]
    return node


def after_requant(node: torch.fx.Node) -> torch.fx.Node:
    """The dequantize that follows `node`'s re-quantization, when there is one: the value its
    consumers see (so a layer's output rounding is counted)."""
    users = list(node.users)
    if len(users) == 1 and is_quantize(users[0]):
        deq = [u for u in users[0].users if is_dequantize(u)]
        if deq:
            return deq[0]
    return node


def nodes_for_op(program: Any, op: str) -> list[torch.fx.Node]:
    """Call nodes of `program` (ExportedProgram, GraphModule or Graph) running `op` ('aten.hardswish'
    or a full overload name)."""
    if program is None:
        return []
    graph = program.graph_module.graph if hasattr(program, "graph_module") else getattr(program, "graph", program)
    short = op.split(".")
    return [n for n in graph.nodes
            if n.op == "call_function" and (op_name(n.target) == op or op_name(n.target).split(".")[:2] == short[:2])]
