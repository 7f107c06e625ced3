import json
import textwrap
from pathlib import Path

import pytest

from mbv3_mobile.cli.options import parse_overrides
from mbv3_mobile.pipeline import PipelineError, load_pipeline, run_pipeline

TOY = textwrap.dedent("""
    name = "toy"
    [params]
    base = 5
    boost = 1
    variants = ["a", "b"]
    out = "OUT"
    [help]
    base = "the base value"
    boost = "multiplies variant b"
    variants = "which variants"
    out = "output folder"
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
    [gates.toy]
    max_abs_dlogit = { max = 100 }
    [[stages]]
    name = "check"
    run = "toy_stages:check"
    inputs = ["scale"]
    foreach = "variants"
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
    assert _calls(tmp) == ["make[None]", "scale[a]", "scale[b]", "check[a]", "check[b]", "publish[None]"]
    assert json.loads((tmp / "out" / "values.json").read_text()) == {"a": 10, "b": 15}
    second = run_pipeline(spec, progress=False)
    assert _calls(tmp) == ["publish[None]"]  # publish is declared cache = false
    assert all(second[k].cached for k in ("make", "scale[a]", "scale[b]", "check[a]", "check[b]"))
    assert first["scale[a]"].key == second["scale[a]"].key


def test_parameter_change_reruns_only_downstream(toy):
    spec, tmp = toy
    run_pipeline(spec, progress=False)
    _calls(tmp)
    run_pipeline(spec, {"boost": 2}, progress=False)  # only variant b declares boost
    assert _calls(tmp) == ["scale[b]", "check[b]", "publish[None]"]
    assert json.loads((tmp / "out" / "values.json").read_text()) == {"a": 10, "b": 30}
    run_pipeline(spec, {"base": 1}, progress=False)  # the root changes: everything downstream reruns
    assert _calls(tmp) == ["make[None]", "scale[a]", "scale[b]", "check[a]", "check[b]", "publish[None]"]


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
    assert _calls(tmp) == ["scale[b]", "check[a]", "check[b]", "publish[None]"]  # make, scale[a]: complete, reused


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




def test_gates_are_judged_on_every_run_without_remeasuring(toy, tmp_path):
    """Gates are in no cache key: a tightened gate fails on the cached figures, nothing reruns."""
    from mbv3_mobile.pipeline import GateFailure

    spec, tmp = toy
    run_pipeline(spec, progress=False)
    _calls(tmp)
    strict = tmp_path / "strict.toml"
    strict.write_text(spec.path.read_text().replace("max = 100", "max = 12"))
    with pytest.raises(GateFailure, match=r"(?s)toy b: gate failed.*max_abs_dlogit = 15 \(must be <= 12\)"):
        run_pipeline(load_pipeline(strict), progress=False)
    assert _calls(tmp) == []  # judged from the cache: nothing was measured again, nothing published


def test_a_damaged_cache_entry_is_rebuilt_not_reused(toy, capsys):
    spec, tmp = toy
    first = run_pipeline(spec, progress=False)
    _calls(tmp)
    (first["scale[b]"].dir / "value.txt").write_text("999")  # damaged after the stage finished
    again = run_pipeline(spec, progress=False)
    assert "scale[b]" in _calls(tmp) and not again["scale[b]"].cached
    assert "cache entry" in capsys.readouterr().out and (again["scale[b]"].dir / "value.txt").read_text() == "15"


def test_editing_code_a_stage_imports_reruns_it(tmp_path, monkeypatch):
    """The key covers every module the stage can reach, not only the stage's own file."""
    import importlib
    import sys

    (tmp_path / "edit_helper.py").write_text("FACTOR = 2\n")
    (tmp_path / "edit_stages.py").write_text(
        "import json\nfrom edit_helper import FACTOR\n\n"
        "def make(ctx):\n    (ctx.out_dir / 'v.txt').write_text(str(FACTOR))\n    return {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    sys.modules.pop("edit_stages", None)
    toml = tmp_path / "edit.toml"
    toml.write_text('name = "edit"\n[params]\n[[stages]]\nname = "make"\nrun = "edit_stages:make"\n')
    monkeypatch.setenv("MBV3_CACHE", str(tmp_path / "cache"))
    first = run_pipeline(load_pipeline(toml), progress=False)
    assert run_pipeline(load_pipeline(toml), progress=False)["make"].cached
    (tmp_path / "edit_helper.py").write_text("FACTOR = 3  # edited\n")
    after = run_pipeline(load_pipeline(toml), progress=False)
    assert not after["make"].cached and after["make"].key != first["make"].key


def test_android_keys_follow_the_code_each_stage_runs(trained_ci_checkpoint, tmp_path, monkeypatch):
    """On a copy of the package: editing the lowering code changes the keys of lower and what
    follows, not quantize's inputs; editing the model card's renderer changes only publishing;
    tightening a gate in the pipeline file changes no key (gates are judged, not cached)."""
    import shutil

    import mbv3_mobile
    from mbv3_mobile.core import code
    from mbv3_mobile.pipeline.runner import plan_pipeline

    copy = tmp_path / "src"
    shutil.copytree(Path(mbv3_mobile.__file__).parent, copy / "mbv3_mobile")
    real_root = code._package_root
    monkeypatch.setattr(code, "_package_root", lambda pkg: copy if pkg == "mbv3_mobile" else real_root(pkg))
    params = {"checkpoint": str(trained_ci_checkpoint), "quant": ["fp32", "ptq"]}
    spec = load_pipeline("android")
    before = plan_pipeline(spec, params)

    def edit(rel: str):
        path = copy / "mbv3_mobile" / rel
        path.write_text(path.read_text() + "\n# edited\n")
        return plan_pipeline(spec, params)

    lowered = edit("export/executorch/lower.py")
    changed = {k for k in before if before[k] != lowered[k]}
    assert {"lower[fp32]", "lower[ptq]", "verify[fp32]", "bundle[ptq]", "package"} <= changed
    assert "resolve" not in changed
    carded = edit("card/render.py")
    assert {k for k in before if lowered[k] != carded[k]} == {"package"}
    gates = tmp_path / "android.toml"
    gates.write_text(spec.path.read_text().replace("top1_drop = { max = 0.005 }", "top1_drop = { max = 0.0001 }"))
    assert plan_pipeline(load_pipeline(gates), params) == carded
