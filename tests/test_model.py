import json
from pathlib import Path

import pytest
import torch
from deterministic import deterministic_input, fill_deterministic

from mbv3_mobile import ModelConfig, build_model, mobilenet_v3_large, mobilenet_v3_small
from mbv3_mobile.core.errors import ConfigError
from mbv3_mobile.model.config import WIDTHS, make_divisible
from mbv3_mobile.model.flops import profile_model

REF = json.loads((Path(__file__).parent / "fixtures" / "reference_layouts.json").read_text())


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_param_counts_equal_torchvision():
    assert n_params(mobilenet_v3_large()) == 5_483_032
    assert n_params(mobilenet_v3_small()) == 2_542_856


@pytest.mark.parametrize("arch", ["large", "small"])
@pytest.mark.parametrize("width", WIDTHS)
def test_state_dict_layout_equals_torchvision(arch, width):
    # reference_layouts.json was recorded from torchvision 0.29.1 itself (tests/fixtures/make_reference.py)
    ours = {k: list(v.shape) for k, v in build_model(arch=arch, width=width).state_dict().items()}
    ref = REF["layouts"][f"torchvision_{arch}_{width}"]
    assert list(ours) == list(ref)  # same keys in the same order
    assert ours == ref
    assert n_params(build_model(arch=arch, width=width)) == REF["params"][f"torchvision_{arch}_{width}"]


@pytest.mark.parametrize("key", sorted(k for k in REF["logits"] if k.startswith("torchvision")))
def test_forward_matches_torchvision_on_identical_weights(key):
    _, arch, width = key.split("_")
    model = build_model(arch=arch, width=float(width)).eval()
    fill_deterministic(model)
    with torch.no_grad():
        out = model(deterministic_input(64))[0]
    torch.testing.assert_close(out, torch.tensor(REF["logits"][key]), rtol=0, atol=1e-5)


def test_minimal_variant_matches_tf_slim_layout():
    # timm's tf_mobilenetv3_*_minimal_100 is the TF-slim minimalistic model; mapped, its layout is ours.
    from mbv3_mobile.model.checkpoint import guess_config, timm_to_torchvision

    for arch in ("large", "small"):
        lay = REF["layouts"][f"timm_tf_mobilenetv3_{arch}_minimal_100"]
        sd = {k: torch.zeros(s) for k, s in lay.items()}
        assert guess_config(timm_to_torchvision(sd)) == ModelConfig(arch=arch, width=1.0, minimal=True)
    m = build_model(arch="large", minimal=True)
    kinds = {type(x).__name__ for x in m.modules()}
    assert "Hardswish" not in kinds and "SqueezeExcitation" not in kinds
    assert all(c.kernel_size in ((1, 1), (3, 3)) for c in m.modules() if isinstance(c, torch.nn.Conv2d))


def test_table_rows_follow_the_paper():
    large = ModelConfig(arch="large").blocks()
    assert len(large) == 15 and len(ModelConfig(arch="small").blocks()) == 11
    assert (large[3].kernel, large[3].exp_ch, large[3].out_ch, large[3].use_se, large[3].activation, large[3].stride) == (
        5, 72, 40, True, "RE", 2)
    assert large[3].se_channels == make_divisible(72 // 4, 8) == 24
    bn = [m for m in mobilenet_v3_small().modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(b.eps == 1e-3 and b.momentum == 0.01 for b in bn)
    hs = [m for m in mobilenet_v3_small().modules() if type(m).__name__ == "SqueezeExcitation"]
    assert all(isinstance(s.scale_activation, torch.nn.Hardsigmoid) for s in hs)


def test_width_rounding_is_multiple_of_eight():
    for w in WIDTHS:
        for row in ModelConfig(arch="large", width=w).blocks():
            assert row.in_ch % 8 == 0 and row.exp_ch % 8 == 0 and row.out_ch % 8 == 0
    assert make_divisible(16 * 0.35) == 8 and make_divisible(24 * 0.35) == 8


@pytest.mark.parametrize("arch", ["large", "small"])
@pytest.mark.parametrize("width,res", [(0.35, 32), (0.5, 96), (0.75, 57), (1.0, 224), (1.25, 40)])
def test_forward_shapes(arch, width, res):
    m = build_model(arch=arch, width=width, num_classes=7, dropout=0.1).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, res, res)).shape == (2, 7)


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ConfigError, match="width 0.6"):
        build_model(width=0.6)
    with pytest.raises(ConfigError, match="arch"):
        build_model(arch="medium")
    with pytest.raises(ConfigError, match=">= 32"):
        profile_model(build_model(), 16)


def test_macs_report_uses_flop_counter():
    large = profile_model(mobilenet_v3_large(), 224)
    small = profile_model(mobilenet_v3_small(), 224)
    assert 215e6 < large.macs < 219e6  # torchvision: 0.22 GFLOPS (MACs)
    assert 56e6 <= small.macs <= 66e6
    assert sum(r.macs for r in large.rows) == large.macs
    assert large.rows[-1].out_shape == (1, 1000)


@pytest.mark.parametrize("config", [
    ModelConfig(arch="large", width=1.0), ModelConfig(arch="small", width=0.35, num_classes=10),
    ModelConfig(arch="small", width=1.25, minimal=True), ModelConfig(arch="large", width=0.5, minimal=True),
])
def test_torch_export_has_no_graph_breaks(config):
    m = build_model(config).eval()
    x = torch.randn(1, 3, 64, 64)
    ep = torch.export.export(m, (x,), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), m(x))
