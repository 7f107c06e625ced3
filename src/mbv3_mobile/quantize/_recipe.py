"""The PTQ/QAT recipe on top of executorch's XNNPACKQuantizer: the stem edge stays float.

MobileNetV3's stem (conv 3x3 -> BN -> hard-swish, 16 channels) feeds the first block's first
convolution, and the stem's channels have ranges too unequal for one per-tensor int8 scale
(XNNPACK has no per-channel activation quantization, and hard-swish is not positively homogeneous,
so cross-layer equalisation cannot re-balance them). The recipe therefore runs the stem conv and
the first block's first conv in fp32 (float input, weights and output up to that conv; its output
is the first int8 tensor), inside the same XNNPACK delegate. In Large the stem's value also feeds
the first residual add: the add reads it in float and its output is int8 again. The study, with
the alternatives measured and the reproduce commands: docs/int8-recipe.md.
"""

from __future__ import annotations

import copy

import torch
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
    XNNPACKQuantizer,
    get_symmetric_quantization_config,
)
from torch import nn

from mbv3_mobile.graph import is_conv_or_linear, module_path


def _activation_args(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The values `node` reads that are computed, not parameters (BatchNorm reads four parameters)."""
    return [a for a in node.args if isinstance(a, torch.fx.Node) and a.op != "get_attr"]


def stem_edge(graph: torch.fx.Graph) -> tuple[list[torch.fx.Node], list[torch.fx.Node]]:
    """(the stem: its conv and the element-wise nodes after it, the nodes reading it).

    The stem conv is the first compute node fed by a model input; its value is followed through
    one-input nodes (BatchNorm, hard-swish) to the nodes that read it: compute nodes, and
    multi-input ones (Large's first residual add), whose output stays int8 so the float edge ends there."""
    inputs = {n for n in graph.nodes if n.op == "placeholder"}
    conv = next((n for n in graph.nodes if is_conv_or_linear(n) and n.args and n.args[0] in inputs), None)
    if conv is None:
        return [], []
    stem, readers, todo = [conv], [], list(conv.users)
    while todo:
        n = todo.pop()
        if n in stem or n in readers:
            continue
        if is_conv_or_linear(n) or (n.op == "call_function" and len(_activation_args(n)) > 1):
            readers.append(n)
        elif n.op == "call_function":
            stem.append(n)
            todo += list(n.users)
    return stem, readers


class MobileNetV3Quantizer(XNNPACKQuantizer):
    """XNNPACKQuantizer (int8 per-channel symmetric weights, per-tensor affine activations) with the
    stem edge left in float (module docstring); `float_stem=False` is XNNPACKQuantizer as it is."""

    def __init__(self, *, qat: bool = False, float_stem: bool = True) -> None:
        super().__init__()
        self.float_stem = float_stem
        self.set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        model = super().annotate(model)
        if not self.float_stem:
            return model
        stem, readers = stem_edge(model.graph)
        for node in stem + readers:
            ann = node.meta.get("quantization_annotation")
            if ann is None:
                continue
            for arg in ann.input_qspec_map:
                if node in stem or is_conv_or_linear(node) or arg in stem:
                    ann.input_qspec_map[arg] = None  # no observer, so no q/dq: float input (and weight, bias)
            if node in stem:
                ann.output_qspec = None
        return model


def fold_stem_batchnorm(model: nn.Module, graph: torch.fx.GraphModule) -> nn.Module:
    """A copy of `model` (eval mode) with each BatchNorm folded into the float stem-edge conv before it.

    For QAT: torchao rewrites every conv+BN into its fused QAT pattern and folds it back at convert
    only where the weight is fake-quantized, so a float conv would keep the pattern's BN and weight
    arithmetic, which XNNPACK does not take. With BN frozen for the fine-tune (quantize.pt2e), the
    folded conv is the same function. `graph` is the model exported for quantization."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    stem, readers = stem_edge(graph.graph)
    out = copy.deepcopy(model).eval()
    modules = dict(out.named_modules())
    for path in dict.fromkeys(module_path(n) for n in stem + readers if is_conv_or_linear(n)):
        parent, _, index = (path or "").rpartition(".")
        if not index.isdigit():
            continue
        conv, bn = modules.get(path), modules.get(f"{parent}.{int(index) + 1}")
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            setattr(modules[parent], index, fuse_conv_bn_eval(conv, bn))
            setattr(modules[parent], str(int(index) + 1), nn.Identity())
    return out
