"""LR-ASPP against the real torchvision (layouts and outputs recorded in a side venv by
tests/fixtures/make_segmentation_reference.py): every backbone it builds, exact names and shapes,
and the same outputs on the same deterministic weights."""

import json
from pathlib import Path

import pytest
import torch
from deterministic import deterministic_input, fill_deterministic

from mbv3_mobile.core.errors import ConfigError
from mbv3_mobile.model.network import mobilenet_v3_large, mobilenet_v3_small
from mbv3_mobile.tasks.segmentation.network import LRASPP, SegmentationConfig, lraspp_mobilenet_v3_large

REF = json.loads((Path(__file__).parent / "fixtures" / "reference_segmentation.json").read_text())


def _ours(name: str) -> LRASPP:
    arch, width, tail = name.split("_")
    return LRASPP(SegmentationConfig(arch=arch, width=float(width), reduced_tail=tail == "reduced"))


@pytest.mark.parametrize("name", sorted(k for k in REF["layouts"] if k != "lraspp_mobilenet_v3_large"))
def test_state_dict_layout_and_size_match_torchvision(name):
    model = _ours(name)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == REF["layouts"][name]
    assert list(model.state_dict()) == list(REF["layouts"][name])  # the same order, as torchvision saves
    assert sum(p.numel() for p in model.parameters()) == REF["params"][name]


def test_torchvisions_builder_layout_loads_strict_into_the_default_model():
    layout = REF["layouts"]["lraspp_mobilenet_v3_large"]
    state = {k: torch.zeros(shape) for k, shape in layout.items()}
    result = lraspp_mobilenet_v3_large().load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize("name", sorted(REF["outputs"]))
def test_outputs_match_torchvision_on_the_same_weights(name):
    model = _ours(name).eval()
    fill_deterministic(model)
    with torch.no_grad():
        y = model(deterministic_input(REF["resolution"]))[0].double()
    assert y.shape == (21, REF["resolution"], REF["resolution"])
    ref = REF["outputs"][name]
    assert torch.allclose(y.mean((1, 2)), torch.tensor(ref["class_means"], dtype=torch.float64), atol=1e-4, rtol=0)
    grid = torch.tensor(ref["grid"], dtype=torch.float64)
    assert (y[:, ::7, ::7].flatten() - grid).abs().max() <= 1e-4
    assert grid.abs().max() > 1e-2  # the recorded logits are not all near zero: the bound above means something


def test_head_taps_output_strides_8_and_16():
    for model in (lraspp_mobilenet_v3_large(), _ours("small_1.0_reduced")):
        low, high = model.eval().features(torch.zeros(1, 3, 128, 128))
        assert low.shape[-1] == 128 // 8 and high.shape[-1] == 128 // 16


def test_torch_export_program_matches_eager():
    model = _ours("small_0.5_reduced").eval()
    x = torch.randn(1, 3, 96, 96)
    program = torch.export.export(model, (x,))  # what every format starts from
    with torch.no_grad():
        assert torch.allclose(program.module()(x), model(x), atol=1e-5)


def test_a_classifier_initialises_the_backbone_and_a_mismatch_is_named():
    classifier = mobilenet_v3_large()
    model = lraspp_mobilenet_v3_large(num_classes=11)
    loaded = model.init_backbone(classifier.state_dict())
    assert len(loaded) == len(model.backbone.state_dict())
    assert all(torch.equal(model.backbone.state_dict()[k.removeprefix("features.")], classifier.state_dict()[k])
               for k in loaded)
    with pytest.raises(ConfigError, match=r"cannot initialise .* features\.13\.block\.3\.0\.weight of shape"):
        lraspp_mobilenet_v3_large(reduced_tail=True).init_backbone(classifier.state_dict())
    with pytest.raises(ConfigError, match="lacks features.0.0.weight"):
        lraspp_mobilenet_v3_large().init_backbone({})
    with pytest.raises(ConfigError, match="cannot initialise"):
        lraspp_mobilenet_v3_large().init_backbone(mobilenet_v3_small().state_dict())


def test_config_round_trips_and_names_the_variant():
    cfg = SegmentationConfig(arch="small", width=0.75, num_classes=11, reduced_tail=True)
    assert SegmentationConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.name == "lraspp_mobilenet_v3_small_075_reduced"
    with pytest.raises(ConfigError, match="unknown segmentation config keys"):
        SegmentationConfig.from_dict({**cfg.to_dict(), "aux_loss": True})
    with pytest.raises(ConfigError, match="width"):
        SegmentationConfig(width=0.6)


def test_checkpoints_round_trip_and_torchvisions_pth_loads_with_its_variant_read_from_the_shapes(tmp_path):
    from mbv3_mobile.data.preprocess import Preprocessing
    from mbv3_mobile.model.checkpoint import CheckpointError, load_checkpoint
    from mbv3_mobile.tasks.segmentation.checkpoint import load_segmentation_checkpoint, save_segmentation_checkpoint

    model = _ours("small_0.75_reduced")
    fill_deterministic(model)
    pre = Preprocessing(resolution=64)
    path = save_segmentation_checkpoint(tmp_path / "seg.safetensors", model, preprocessing=pre,
                                        labels=[f"c{i}" for i in range(21)])
    ck = load_segmentation_checkpoint(path)
    assert ck.config == model.config and ck.preprocessing == pre and ck.extra["task"] == "segmentation"
    assert all(torch.equal(a, b) for a, b in zip(ck.model.state_dict().values(), model.state_dict().values()))
    with pytest.raises(CheckpointError, match="is a segmentation checkpoint, not a classifier: use --task segmentation"):
        load_checkpoint(path)
    # torchvision's file: a plain state_dict saved with torch.save (loaded weights-only)
    torch.save(model.state_dict(), tmp_path / "tv.pth")
    tv = load_segmentation_checkpoint(tmp_path / "tv.pth")
    assert tv.config == model.config and tv.source == "torchvision"
    x = deterministic_input(64)
    with torch.no_grad():
        assert torch.equal(tv.model(x), model.eval()(x))


def test_a_classifier_needs_init_backbone_to_become_a_segmentation_model(tmp_path):
    from mbv3_mobile.model.checkpoint import CheckpointError
    from mbv3_mobile.tasks.segmentation.checkpoint import load_segmentation_checkpoint

    classifier = mobilenet_v3_small(width=0.5)
    torch.save(classifier.state_dict(), tmp_path / "cls.pth")
    with pytest.raises(CheckpointError, match="classification checkpoint, not a segmentation one: give it as --init-backbone"):
        load_segmentation_checkpoint(tmp_path / "cls.pth")
    ck = load_segmentation_checkpoint(tmp_path / "cls.pth", init_backbone=True,
                                      config=SegmentationConfig(num_classes=11))
    assert (ck.config.arch, ck.config.width, ck.config.num_classes) == ("small", 0.5, 11)
    assert torch.equal(ck.model.backbone[3].block[0][0].weight, classifier.features[3].block[0][0].weight)
