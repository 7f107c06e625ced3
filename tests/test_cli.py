import json
import os
import subprocess
import sys

import pytest

from mbv3_mobile.cli import main


def test_info_table(capsys):
    assert main(["info", "--arch", "large", "--width", "1.0", "--resolution", "224"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v3_large_100" in out and "5,483,032" in out and "216.6" in out and "features.16" in out


def test_info_json_and_module_entry_point():
    res = subprocess.run([sys.executable, "-m", "mbv3_mobile", "info", "--arch", "small", "--json"],
                         capture_output=True, text=True, check=True)
    data = json.loads(res.stdout)
    assert data["params"] == 2_542_856 and data["model"] == "mobilenet_v3_small_100"


def test_bad_resolution_is_a_clean_error(capsys):
    assert main(["info", "--resolution", "16"]) == 2
    err = capsys.readouterr().err
    assert "resolution 16" in err and "Traceback" not in err


def test_every_option_of_every_command_explains_itself():
    """Every option in every `mbv3` command's --help has a help line (pipeline options: from [help]),
    and every --help renders (argparse %-formats help text: a bare "5 % on" in a pipeline file crashed it)."""
    import argparse

    from mbv3_mobile.cli import build_parser
    from mbv3_mobile.cli.options import pipeline_parser
    from mbv3_mobile.pipeline.spec import load_pipeline, pipeline_files

    parsers = [p for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction) for p in a.choices.values()]
    parsers += [pipeline_parser(load_pipeline(name), f"mbv3 {name}") for name in pipeline_files()]
    for parser in parsers:
        assert parser.format_help().startswith("usage:")
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                assert action.help and len(action.help) > 8, (parser.prog, action.option_strings)


def test_pipeline_names_match_exactly_or_by_unambiguous_prefix_from_anywhere(tmp_path, monkeypatch):
    """Pipelines are package data: found from any folder; `s` and `id` are not pipelines."""
    from mbv3_mobile.pipeline.spec import PipelineError, find_pipeline

    monkeypatch.chdir(tmp_path)
    assert find_pipeline("android").name == "01_android.toml"
    assert find_pipeline("and").name == "01_android.toml" and find_pipeline("o").name == "03_onnx.toml"
    for bad in ("s", "id"):
        try:
            find_pipeline(bad)
        except PipelineError as exc:
            assert "no pipeline" in str(exc) and "android" in str(exc)
        else:
            raise AssertionError(f"{bad!r} matched a pipeline")
    res = subprocess.run([sys.executable, "-m", "mbv3_mobile", "export", "android", "--help"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 0 and "--calib-images N" in res.stdout and "calibrate" in res.stdout


@pytest.mark.slow
def test_toolchain_noise_is_filtered_and_verbose_shows_it(trained_ci_checkpoint, tmp_path):
    cmd = [sys.executable, "-m", "mbv3_mobile", "export", "onnx", "--checkpoint", str(trained_ci_checkpoint),
           "--variants", "fp32", "--parity-images", "100", "--out", str(tmp_path / "out"), "--force"]
    # --force rebuilds every stage (the toolchain's warnings come from building): in a cache of its
    # own, because a rebuilt entry can hold new bytes under its key (ORT's .ort serialiser writes
    # different bytes each time), which re-keys what other workers' runs build on it in the shared cache.
    env = {**os.environ, "MBV3_CACHE": str(tmp_path / "cache")}
    quiet = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    text = quiet.stdout + quiet.stderr
    assert "Warning" not in text and "cpuinfo_utils" not in text and "[onnx] finished" in text
    verbose = subprocess.run([*cmd[:3], "-v", *cmd[3:]], capture_output=True, text=True, env=env)
    assert verbose.returncode == 0 and "Warning" in verbose.stdout + verbose.stderr  # the filter was doing something
