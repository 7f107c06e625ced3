"""Caches and outputs you can trust: a damaged cache entry is rebuilt and the right bytes published,
a full disk ends in one clear line with nothing half-published, two runs at once agree."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mbv3_mobile.core.atomic import DiskError, atomic_path, disk_error
from mbv3_mobile.core.hashing import sha256_file
from mbv3_mobile.pipeline import cache_dir, load_pipeline, run_pipeline

ROOT = Path(__file__).resolve().parents[1]
NAME = "mobilenet_v3_small_050_32px"


@pytest.fixture
def onnx_params(trained_ci_checkpoint, tmp_path):
    # the export test's parameters: its cached stages are reused here
    return {"checkpoint": str(trained_ci_checkpoint), "out": str(tmp_path / "dist"), "parity_images": 500,
            "calib_images": 100}


def _private_cache(results, root: Path) -> None:
    """Copy a run's cache entries into `root`: a test that damages an entry damages its own copy,
    never the one another test (or an xdist worker) is reading."""
    import shutil

    shared = cache_dir()
    for r in results.values():
        if r.dir.is_relative_to(shared) and r.dir != shared:
            shutil.copytree(r.dir, root / "pipelines" / r.dir.relative_to(shared), dirs_exist_ok=True)


def test_a_damaged_cached_model_is_rebuilt_and_the_right_bytes_published(onnx_params, tmp_path, monkeypatch, capsys):
    spec = load_pipeline("onnx")
    _private_cache(run_pipeline(spec, onnx_params, progress=False), tmp_path / "cache")
    monkeypatch.setenv("MBV3_CACHE", str(tmp_path / "cache"))
    first = run_pipeline(spec, onnx_params, progress=False)
    assert all(r.cached for k, r in first.items() if k not in ("package", "_total"))  # the copy is complete
    published = Path(onnx_params["out"]) / NAME / "model.onnx"
    good = sha256_file(published)
    cached = first["quantize[fp32]"].out("model")
    with open(cached, "r+b") as f:  # 64 bytes zeroed inside the cached model
        f.seek(1000)
        f.write(bytes(64))
    capsys.readouterr()
    again = run_pipeline(spec, onnx_params, progress=False)
    out = capsys.readouterr().out
    assert "quantize[fp32]] cache entry" in out and "damaged" in out and "rebuilding" in out
    assert not again["quantize[fp32]"].cached
    assert sha256_file(published) == good  # the verified bytes, not the damaged ones
    assert sha256_file(again["quantize[fp32]"].out("model")) == good


def test_publish_refuses_bytes_the_verify_stage_did_not_measure(onnx_params):
    """A file swapped after verification (the cache entry itself intact) is not published."""
    from mbv3_mobile.pipeline.publish import ship
    from mbv3_mobile.pipeline.spec import PipelineError

    results = run_pipeline(load_pipeline("onnx"), onnx_params, progress=False)
    verify = results["verify[int8]"]
    other = results["quantize[fp32]"].out("model")  # real ONNX bytes, but not the ones measured
    with pytest.raises(PipelineError, match="not what verify\\[int8\\] measured"):
        ship(verify, other, Path(onnx_params["out"]) / "x.onnx")


def test_disk_full_during_publish_is_one_clear_line_and_nothing_half_published(onnx_params, monkeypatch, capsys):
    import shutil

    from mbv3_mobile.cli import main
    from mbv3_mobile.pipeline import publish

    run_pipeline(load_pipeline("onnx"), onnx_params, progress=False)  # every stage cached
    out_dir = Path(onnx_params["out"])
    shutil.rmtree(out_dir)

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(publish.shutil, "copy2", full)
    args = ["export", "onnx", "--checkpoint", onnx_params["checkpoint"], "--out", str(out_dir), "--parity-images", "500",
            "--calib-images", "100", "--quiet"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on the device" in err[0] and "MBV3_CACHE" in err[0] and str(out_dir) in err[0]
    assert not (out_dir / NAME).exists() and not [p for p in out_dir.rglob("*") if p.is_file()]


@pytest.mark.parametrize("code, words", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system"),
                                         (errno.ENOSPC, "no space left")])
def test_disk_errors_name_the_path_and_the_fix(tmp_path, monkeypatch, code, words):
    target = tmp_path / "out" / "model.pte"

    def failing(*_a, **_k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(DiskError) as info, atomic_path(target) as tmp:
        tmp.write_bytes(b"x")
    message = str(info.value)
    assert words in message and str(target) in message and "\n" not in message
    assert not list((tmp_path / "out").iterdir())  # the temp file is gone too
    assert disk_error(OSError(errno.EIO, "io"), target).errno == errno.EIO  # other errors stay as they are


@pytest.mark.slow
def test_two_exports_at_once_build_each_stage_once_and_publish_one_consistent_folder(trained_ci_checkpoint, tmp_path):
    env = {**os.environ, "MBV3_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mbv3_mobile", "export", "onnx", "--checkpoint", str(trained_ci_checkpoint),
           "--variants", "fp32", "--parity-images", "200", "--out", str(tmp_path / "dist"), "--quiet"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    both = "\n".join(logs)
    for stage in ("resolve", "export", "simplify", "quantize[fp32]", "verify[fp32]"):
        assert both.count(f"[onnx:{stage}] running") == 1, (stage, both)  # the lock: built once, reused once
    folder = tmp_path / "dist" / NAME
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["files"]:
        path = folder / entry["path"]
        assert path.stat().st_size == entry["bytes"] and ("sha256" not in entry or sha256_file(path) == entry["sha256"])
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(f".{NAME}.") and p.suffix in (".tmp", ".old")]
