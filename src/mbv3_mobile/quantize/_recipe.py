"""The PTQ/QAT recipe on top of executorch's XNNPACKQuantizer: the stem edge stays float.

MobileNetV3's stem (conv 3x3 -> BN -> hard-swish, 16 channels) feeds the first block's first
convolution. The stem's channels have very different ranges (embedded default, per-channel max
of the hard-swish output: 0.06 to 11.5), so one per-tensor int8 scale leaves the small channels
1 to 8 levels, both on the stem conv's output and on the hard-swish output. XNNPACK has no
per-channel activation quantization, and hard-swish is not positively homogeneous, so cross-layer
equalisation cannot re-balance the channels through it. The recipe therefore runs the stem conv
and the first block's first conv in fp32 (float input, weights and output up to that conv; its
output is the first int8 tensor), inside the same XNNPACK delegate. In Large the stem's value also
feeds the first block's residual add: the add reads it in float and its output is int8 again (going
on in float through the add would put features.2's 112 x 112 expand conv in fp32 as well: +0.4 dB
on the Large below, for 0-9 % more latency at 224 px in two runs). The two layers are ~3 % of the
MACs of Large and ~10 % of Small (latency: `mbv3 bench --sweep --sweep-runtimes pte_int8,pte_int8_all`;
figures in the README's "int8 recipe" paragraph).

Measured on the embedded default (PT2E reference graph, 300 calibration pictures, three calibration
seeds; logits vs eager fp32 on the 10k test set and on two sets of 1,000): SNR 23.9-25.3 -> 27.2-28.1
dB, top-1 agreement 98.97-99.13 % -> 99.53-99.64 %, min cosine 0.938-0.981 -> 0.989-0.995; the .pte
(ExecuTorch runtime, 10k): drop +0.11 -> +0.05 pt, agreement 99.07 -> 99.50 %, SNR 24.5 -> 27.7 dB.
Parts of it gain less (calibration seed 0, SNR on the two sets; all int8: 24.9 / 24.4 dB): the stem
conv alone in fp32 25.6 / 25.2, the first block's conv alone 26.3 / 26.2, both but the stem conv's
output quantized 26.3 / 26.2; the model input by min-max instead of the histogram loses (23.3 / 22.7).
A MobileNetV3-Large 1.0 trained here (2 epochs at 64 px, 88.7 % val): SNR on 10k 29.4 -> 30.3 dB,
agreement 99.17 -> 99.32 %, min cosine 0.990 / 0.991 -> 0.996 / 0.994.
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
