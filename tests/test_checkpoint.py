import json
from pathlib import Path

import pytest
import torch
from deterministic import deterministic_input, fill_state_dict

from mbv3_mobile import CheckpointError, Preprocessing, build_model, load_checkpoint, save_checkpoint
from mbv3_mobile.model.checkpoint import guess_config, timm_to_torchvision

REF = json.loads((Path(__file__).parent / "fixtures" / "reference_layouts.json").read_text())


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_own_checkpoint_round_trip_is_bit_exact(tmp_path):
    m = build_model(arch="small", width=0.75, num_classes=3, dropout=0.1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    pre = Preprocessing(resolution=64, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    path = save_checkpoint(tmp_path / "m.safetensors", m, preprocessing=pre, labels=["a", "b", "c"], extra={"note": 1})
    ck = load_checkpoint(path)
    assert ck.config == m.config and ck.preprocessing == pre and ck.labels == ["a", "b", "c"] and ck.extra == {"note": 1}
    assert _same_weights(ck.model, m)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ck.model(x), m.eval()(x))
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file



def test_saving_the_same_model_writes_the_same_bytes(tmp_path):
    """Cache keys cover their inputs' bytes: a re-saved checkpoint (the pipelines' resolve stage)
    must not re-key everything built on it. safetensors orders the metadata differently per save."""
    import hashlib

    m = build_model(arch="small", width=0.5, num_classes=3)
    pre, labels = Preprocessing(resolution=32), ["a", "b", "c"]
    digests = {hashlib.sha256(save_checkpoint(tmp_path / f"{i}.safetensors", m, preprocessing=pre, labels=labels,
                                              extra={"note": 1}).read_bytes()).hexdigest() for i in range(8)}
    assert len(digests) == 1
    ck = load_checkpoint(tmp_path / "0.safetensors")
    assert ck.preprocessing == pre and ck.labels == labels and ck.extra == {"note": 1} and _same_weights(ck.model, m)

def test_torchvision_pth_loads_strict(tmp_path):
    m = build_model(arch="large", width=0.75)
    torch.save(m.state_dict(), tmp_path / "tv.pth")
    ck = load_checkpoint(tmp_path / "tv.pth")
    assert ck.source == "torchvision" and ck.config.arch == "large" and ck.config.width == 0.75
    assert _same_weights(ck.model, m)
    # DDP-prefixed and wrapped dicts load too
    torch.save({"model": {f"module.{k}": v for k, v in m.state_dict().items()}}, tmp_path / "ddp.pth")
    assert _same_weights(load_checkpoint(tmp_path / "ddp.pth").model, m)


@pytest.mark.parametrize("arch", ["large", "small"])
def test_timm_checkpoint_maps_exactly(tmp_path, arch):
    # timm layout recorded from timm 1.0.31; weights filled by formula; logits recorded from timm itself.
    name = f"mobilenetv3_{arch}_100"
    sd = {k: torch.zeros(s) if not k.endswith("num_batches_tracked") else torch.zeros((), dtype=torch.long)
          for k, s in REF["layouts"][f"timm_{name}"].items()}
    fill_state_dict(sd)
    torch.save(sd, tmp_path / "timm.pth")
    ck = load_checkpoint(tmp_path / "timm.pth")
    assert ck.source == "timm" and ck.config.arch == arch and ck.config.width == 1.0
    with torch.no_grad():
        out = ck.model(deterministic_input(64))[0]
    torch.testing.assert_close(out, torch.tensor(REF["logits"][f"timm_{name}"]), rtol=0, atol=1e-5)


def test_timm_width_075_is_rejected_with_reason(tmp_path):
    sd = {k: torch.zeros(s) for k, s in REF["layouts"]["timm_mobilenetv3_large_075"].items()}
    torch.save(sd, tmp_path / "t.pth")
    with pytest.raises(CheckpointError, match="unscaled 1280/1024 head"):
        load_checkpoint(tmp_path / "t.pth")


def test_corrupt_file(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(bad)
    m = build_model(arch="small", width=0.35, num_classes=4)
    good = save_checkpoint(tmp_path / "good.safetensors", m)
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"state_dict": build_model(arch="small", width=0.35).state_dict(), "obj": object()}, tmp_path / "p.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(tmp_path / "p.pth")


def test_other_variant_names_what_the_file_is(tmp_path):
    torch.save(build_model(arch="small", width=0.75, num_classes=10).state_dict(), tmp_path / "s.pth")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "s.pth", arch="large", width=1.0, num_classes=10)
    msg = str(e.value)
    assert "mobilenet_v3_large_100" in msg and "seems to be for mobilenet_v3_small_075 with num_classes=10" in msg
    assert "missing keys" in msg or "shape mismatches" in msg


def test_wrong_num_classes_and_own_file_request(tmp_path):
    m = build_model(arch="small", width=0.5, num_classes=10)
    torch.save(m.state_dict(), tmp_path / "s.pth")
    with pytest.raises(CheckpointError, match=r"classifier.3.weight: file \(10, 512\) vs model \(5, 512\)"):
        load_checkpoint(tmp_path / "s.pth", num_classes=5)
    own = save_checkpoint(tmp_path / "own.safetensors", m)
    with pytest.raises(CheckpointError, match="width: file has 0.5, asked for 1.0"):
        load_checkpoint(own, width=1.0)


def test_missing_and_unexpected_keys_nothing_half_loaded(tmp_path):
    sd = build_model(arch="small", width=0.5).state_dict()
    sd.pop("features.3.block.0.0.weight")
    sd["features.3.extra"] = torch.zeros(3)
    torch.save(sd, tmp_path / "x.pth")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "x.pth", arch="small", width=0.5, num_classes=1000)
    assert "1 missing keys: features.3.block.0.0.weight" in str(e.value)
    assert "1 unexpected keys: features.3.extra" in str(e.value)


def test_guess_config_every_variant():
    for arch in ("large", "small"):
        for width in (0.35, 1.25):
            m = build_model(arch=arch, width=width, num_classes=17)
            assert guess_config(m.state_dict()) == m.config


def test_timm_unmappable_keys_are_named():
    sd = {k: torch.zeros(s) for k, s in REF["layouts"]["timm_mobilenetv3_small_100"].items()}
    sd["head_norm.weight"] = torch.zeros(1024)
    with pytest.raises(CheckpointError, match="head_norm.weight"):
        timm_to_torchvision(sd)
