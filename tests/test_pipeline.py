import json
import textwrap

import pytest

from mbv3_mobile.pipeline import PipelineError, load_pipeline, parse_overrides, run_pipeline

TOY = textwrap.dedent("""
    name = "toy"
    [params]
    base = 5
    boost = 1
    variants = ["a", "b"]
    out = "OUT"
    [[stages]]
    name = "make"
    run = "toy_stages:make"
    params = ["base"]
    [[stages]]
    name = "scale"
    run = "toy_stages:scale"
    inputs = ["make"]
    foreach = "variants"
    variant_params = { b = ["boost"] }
    [[stages]]
    name = "publish"
    run = "toy_stages:publish"
    inputs = ["scale"]
    params = ["variants", "out"]
    cache = false
""")


@pytest.fixture
def toy(tmp_path, monkeypatch):
    path = tmp_path / "toy.toml"
    path.write_text(TOY.replace("OUT", str(tmp_path / "out")))
    monkeypatch.setenv("MBV3_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TOY_LOG", str(tmp_path / "log"))
    return load_pipeline(path), tmp_path


def _calls(tmp_path):
    log = tmp_path / "log"
    calls = log.read_text().split() if log.exists() else []
    log.unlink(missing_ok=True)
    return calls


def test_second_run_reuses_every_cached_stage(toy):
    spec, tmp = toy
    first = run_pipeline(spec, progress=False)
    assert _calls(tmp) == ["make[None]", "scale[a]", "scale[b]", "publish[None]"]
    assert json.loads((tmp / "out" / "values.json").read_text()) == {"a": 10, "b": 15}
    second = run_pipeline(spec, progress=False)
    assert _calls(tmp) == ["publish[None]"]  # publish is declared cache = false
    assert all(second[k].cached for k in ("make", "scale[a]", "scale[b]"))
    assert first["scale[a]"].key == second["scale[a]"].key


def test_parameter_change_reruns_only_downstream(toy):
    spec, tmp = toy
    run_pipeline(spec, progress=False)
    _calls(tmp)
    run_pipeline(spec, {"boost": 2}, progress=False)  # only variant b declares boost
    assert _calls(tmp) == ["scale[b]", "publish[None]"]
    assert json.loads((tmp / "out" / "values.json").read_text()) == {"a": 10, "b": 30}
    run_pipeline(spec, {"base": 1}, progress=False)  # the root changes: everything downstream reruns
    assert _calls(tmp) == ["make[None]", "scale[a]", "scale[b]", "publish[None]"]


def test_interrupted_stage_leaves_nothing_trusted(toy, monkeypatch):
    spec, tmp = toy
    monkeypatch.setenv("TOY_CRASH", "b")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(spec, progress=False)
    assert not list((tmp / "cache").rglob("partial.txt"))  # the half-written folder was removed
    assert not (tmp / "out").exists()
    monkeypatch.delenv("TOY_CRASH")
    _calls(tmp)
    run_pipeline(spec, progress=False)
    assert _calls(tmp) == ["scale[b]", "publish[None]"]  # make and scale[a] were complete: reused


def test_bad_declarations_and_parameters(toy, tmp_path):
    spec, _ = toy
    with pytest.raises(PipelineError, match="unknown parameter"):
        run_pipeline(spec, {"nope": 1}, progress=False)
    bad = tmp_path / "bad.toml"
    bad.write_text(TOY.replace('inputs = ["make"]', 'inputs = ["later"]'))
    with pytest.raises(PipelineError, match="not an earlier stage"):
        load_pipeline(bad)
    with pytest.raises(PipelineError, match="no pipeline"):
        load_pipeline("does-not-exist")


def test_overrides_are_typed_from_the_declaration(toy):
    spec, _ = toy
    assert parse_overrides(spec, ["--base", "7", "--variants", "a"]) == {"base": 7, "variants": ["a"]}
    with pytest.raises(SystemExit):
        parse_overrides(spec, ["--base", "seven"])


