"""Skip torchao's QAT conv+BN pattern passes for conv kinds the graph does not have.

torchao's `prepare_qat_pt2e` (fuse) and `convert_pt2e` (fold) run one helper per conv kind
(conv1d, conv2d, conv_transpose1d, conv_transpose2d), and each helper traces its match and
replacement patterns with a strict `torch.export` (3 for the fuse, 24 for the fold) whatever
convs the model holds: 108 traces for a model with conv2d only (a 20-step QAT of the CI model on
2 cores: 44.6 s with them all, 26.4 s with the 27 that can match). A helper can only rewrite matches of its own conv op (its patterns are
traced from that F.conv*), so a helper whose op is absent from the graph changes nothing and is
skipped here; an unrecognised convolution node keeps every helper. torchao has no option for this;
if its helpers are renamed, nothing is patched and the slow path runs (tests/test_quantize.py
notices). Measured equal graphs and outputs with and without the skip: docs/qat-bn-eps.md."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

_HELPERS = ("_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper")


def _conv_ops() -> dict:
    aten = torch.ops.aten
    return {F.conv1d: {aten.conv1d.default, aten.conv1d.padding},
            F.conv2d: {aten.conv2d.default, aten.conv2d.padding},
            F.conv_transpose1d: {aten.conv_transpose1d.default},
            F.conv_transpose2d: {aten.conv_transpose2d.input}}


def _skip_absent(helper):
    ops = _conv_ops()
    generic = {torch.ops.aten.convolution.default, torch.ops.aten._convolution.default}

    def run_if_present(m, conv_fn, *args, **kwargs):
        targets = {n.target for n in m.graph.nodes if n.op == "call_function"}
        if conv_fn in ops and not targets & (ops[conv_fn] | generic):
            return m
        return helper(m, conv_fn, *args, **kwargs)

    return run_if_present


@contextlib.contextmanager
def only_present_conv_patterns() -> Iterator[bool]:
    """While active, torchao's QAT conv+BN helpers run only for conv kinds in the graph; yields
    whether the helpers were found (False: torchao changed, the full slow path runs)."""
    from torchao.quantization.pt2e import qat_utils

    found = {name: getattr(qat_utils, name) for name in _HELPERS if callable(getattr(qat_utils, name, None))}
    try:
        for name, helper in found.items():
            setattr(qat_utils, name, _skip_absent(helper))
        yield len(found) == len(_HELPERS)
    finally:
        for name, helper in found.items():
            setattr(qat_utils, name, helper)
