"""Accuracy-aware mixed precision on the trained CI model and real Fashion-MNIST pictures: a model
whose all-int8 PTQ is pushed past its gate (one activation channel 100x wider than the rest, same
fp32 function) gets back inside it with at most five layers left in fp32, still fully delegated."""

import pytest
import torch

from mbv3_mobile.data.selection import labelled_pictures
from mbv3_mobile.quantize import mixed
from mbv3_mobile.quantize import pt2e as q
from mbv3_mobile.verify.compare import compare_logits
from mbv3_mobile.verify.gates import GateRule

RULES = (GateRule("top1_drop", "<=", 0.005), GateRule("snr_db", ">=", 15.0))


@pytest.fixture(scope="module")
def pushed(trained_ci_checkpoint):
    from mbv3_mobile import load_checkpoint

    ck = load_checkpoint(trained_ci_checkpoint)
    pre = ck.preprocessing

    def pics(split, n, seed):
        p = labelled_pictures("fashion-mnist", pre, ck.labels, split=split, limit=n, seed=seed)
        return p.normalized(pre), p.labels

    calib, _ = pics("train", 300, 0)
    model = mixed.with_outlier_channel(ck.model.eval(), calib[:200], "features.2.block", 100.0)
    test, labels = pics("test", 2000, 1)
    with torch.no_grad():
        assert (model(test) - ck.model.eval()(test)).abs().max() < 1e-3  # the same function in fp32
    return model, q.calibrate_ptq(model, calib, progress=False), pics("train", 256, 1), (test, labels)


def _figures(model, graph, test):
    x, y = test
    with torch.no_grad():
        return compare_logits(model(x), mixed.logits(graph, x), y)


@pytest.mark.slow
def test_auto_fallback_restores_the_gate_with_few_fp32_layers(pushed):
    model, prepared, (held, held_labels), test = pushed
    assert not mixed.meets(_figures(model, mixed.convert_with_fp32(prepared), test), RULES)  # pushed past the gate
    graph, info = mixed.fallback(prepared, model, held, held_labels, RULES, "auto", log=lambda _m: None)
    assert info["all_int8"]["verdict"] == "fail" and info["passed"]
    assert 1 <= len(info["fp32_layers"]) <= 5 and info["fp32_layers"][0].startswith("features.2.block")
    after = _figures(model, graph, test)  # judged on held-out pictures, confirmed on test pictures
    assert mixed.meets(after, RULES) and after["snr_db"] > 25


@pytest.mark.slow
def test_mixed_graph_is_fully_delegated_to_xnnpack(pushed):
    from mbv3_mobile.export.executorch.lower import lower
    from mbv3_mobile.graph import export_program

    _, prepared, _, (x, _) = pushed
    graph = mixed.convert_with_fp32(prepared, ["features.2.block.1.0"])
    lowered = lower(export_program(graph, x[:1]), require_full_delegation=True)  # raises if anything stays out
    assert lowered.delegation.ok and lowered.delegation.delegated_subgraphs >= 1


@pytest.mark.slow
def test_off_and_named_layers(pushed):
    model, prepared, (held, labels), _ = pushed
    _, off = mixed.fallback(prepared, model, held, labels, RULES, "off")
    assert off == {"mode": "off", "fp32_layers": []}
    _, named = mixed.fallback(prepared, model, held, labels, RULES, "features.0.0")
    assert named["units"] == named["fp32_layers"] == ["features.0.0"] and named["chosen"]["snr_db"] > named["all_int8"]["snr_db"] - 1
    with pytest.raises(ValueError, match="features.99.conv is not a quantized layer"):
        mixed.fallback(prepared, model, held, labels, RULES, "features.99.conv")


def test_a_malformed_fallback_is_refused_before_any_stage():
    from mbv3_mobile.export.executorch.stages import check_params
    from mbv3_mobile.pipeline.spec import PipelineError

    check_params(None, {"quant": ["ptq"], "int8_fallback": "features.0.0,features.2.block.1.0"})
    with pytest.raises(PipelineError, match="use auto, off, or comma-separated layer paths"):
        check_params(None, {"quant": ["ptq"], "int8_fallback": "the stem please"})
