"""Sessions: tests, lint, info, train, eval, export_android, export_ios, export_onnx, parity, harness, bench, card.

Every session runs in ONE shared virtualenv, `.nox/stack`, holding the pinned stack from
pyproject.toml. The stack is ~1.7 GB; a venv per session would reinstall it for each. The venv is
built on first use and refreshed only when pyproject.toml changes (or MBV3_NOX_REINSTALL=1).
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["tests"]

ROOT = Path(__file__).parent
TORCH = "torch==2.13.0"  # as pinned in pyproject.toml
STACK = ROOT / ".nox" / "stack"
BIN = STACK / "bin"


def stack(session: nox.Session) -> dict[str, str]:
    """Create/refresh the shared venv; return the env that puts it first on PATH."""
    stamp = STACK / ".mbv3-installed"
    wanted = (ROOT / "pyproject.toml").read_text()
    if not (BIN / "python").exists():
        session.run(sys.executable, "-m", "venv", str(STACK), external=True)
    if not stamp.exists() or stamp.read_text() != wanted or os.environ.get("MBV3_NOX_REINSTALL"):
        py = str(BIN / "python")
        session.run(py, "-m", "pip", "install", "-q", "--upgrade", "pip", external=True)
        # torch first, from PyTorch's CPU index: a plain `pip install torch` takes PyPI's multi-GB CUDA
        # build. pip prefers 2.13.0+cpu over 2.13.0 when both are offered; where the CPU index cannot be
        # reached, the configured sources decide (a local CPU wheel, or PyPI's CUDA build as a fallback).
        index = os.environ.get("MBV3_TORCH_INDEX", "https://download.pytorch.org/whl/cpu")
        extra = ["--extra-index-url", index, "--timeout", "20", "--retries", "1"] if index else []
        session.run(py, "-m", "pip", "install", "-q", *extra, TORCH, external=True)
        session.run(py, "-m", "pip", "install", "-e", ".[test,lint]", external=True)
        stamp.write_text(wanted)
    return {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(STACK),
        "PYTHONUNBUFFERED": "1",
    }


def run(session: nox.Session, *args: str) -> None:
    env = stack(session)
    session.run(*args, env=env, external=True)


@nox.session
def tests(session: nox.Session) -> None:
    """pytest on every usable core (pytest-xdist, one worker per core, a test file per worker so its
    module fixtures are built once); posargs go to pytest after these, e.g. `nox -s tests -- -m "not
    slow"` (the development loop) or `-- -n 0 -k checkpoint` (one process)."""
    run(session, str(BIN / "pytest"), "-n", "auto", "--dist", "loadfile", "--no-loadscope-reorder",
        *(session.posargs or ["-q"]))


@nox.session
def lint(session: nox.Session) -> None:
    run(session, str(BIN / "ruff"), "check", "src", "tests", "scripts", "mobile_harness", "noxfile.py")


@nox.session
def info(session: nox.Session) -> None:
    """Params / MACs / layer table: `nox -s info -- --arch large --width 1.0 --resolution 224`."""
    run(session, str(BIN / "mbv3"), "info", *session.posargs)


@nox.session
def train(session: nox.Session) -> None:
    """Train/fine-tune: `nox -s train -- --arch small --resolution 32 --epochs 8 --out runs/fmnist`;
    `nox -s train -- --recipe default` reproduces the embedded default (~30 min on 2 cores)."""
    # No arguments: the options (the embedded default ships with the code; nothing to train first).
    run(session, str(BIN / "mbv3"), "train", *(session.posargs or ["--help"]))


# One `export_<pipeline>` session per export pipeline file (a file with a publish stage): a new
# format's pipeline gets its session without editing this file. Read with tomllib, since the
# project itself is not importable before the venv exists.
PIPELINES = ROOT / "pipelines"


def _export_pipelines() -> dict[str, str]:
    out = {}
    for path in sorted(PIPELINES.glob("*.toml")):
        data = tomllib.loads(path.read_text())
        if any(stage.get("publish") for stage in data.get("stages", [])):
            out[data["name"]] = data.get("title", data["name"])
    return out


def _export_session(pipeline: str, title: str):
    def session_fn(session: nox.Session) -> None:
        run(session, str(BIN / "mbv3"), "export", pipeline, *session.posargs)

    session_fn.__doc__ = f"{title}: `nox -s export_{pipeline} -- --help` lists the options."
    return nox.session(name=f"export_{pipeline}")(session_fn)


for _name, _title in _export_pipelines().items():
    globals()[f"export_{_name}"] = _export_session(_name, _title)


@nox.session
def parity(session: nox.Session) -> None:
    """Parity matrix over every format: `nox -s parity -- --images 1000 [--localize]`."""
    run(session, str(BIN / "mbv3"), "parity", *session.posargs)


@nox.session
def card(session: nox.Session) -> None:
    """Refresh a model card: `nox -s card -- dist/android/X --parity dist/parity/X/report --harness runs/harness`."""
    run(session, str(BIN / "mbv3"), "card", *session.posargs)


# The PyTorch -> LiteRT converter (litert-torch) resolves beside torch 2.13.0 but pulls jax,
# transformers and ~35 more packages: it gets a venv of its own, built on the first `nox -s bench`
# only (never for the tests), and bench converts through its interpreter. torch is pinned here too:
# unpinned, pip would pull a multi-GB CUDA build.
LITERT = ROOT / ".nox" / "litert"
LITERT_PINS = ["torch==2.13.0", "litert-torch==0.10.0", "ai-edge-litert==2.3.0"]


def litert_python(session: nox.Session) -> str | None:
    python = LITERT / "bin" / "python"
    stamp = LITERT / ".mbv3-installed"
    if stamp.exists() and stamp.read_text() == " ".join(LITERT_PINS):
        return str(python)
    try:
        session.run(sys.executable, "-m", "venv", str(LITERT), external=True)
        session.run(str(python), "-m", "pip", "install", "-q", *LITERT_PINS, external=True)
    except nox.command.CommandFailed:
        session.warn("no LiteRT converter venv (see above): bench reports the LiteRT row as skipped")
        return None
    stamp.write_text(" ".join(LITERT_PINS))
    return str(python)


@nox.session
def bench(session: nox.Session) -> None:
    """Every runtime on this host, interleaved, as ratios: `nox -s bench [-- --quick --threads 1,all]`
    (no arguments: the embedded default plus Large / Small 1.0 at 224 px, random-BN weights; `--sweep`
    for latency vs MACs, `--profile` for per-op profiles). MBV3_NO_LITERT=1: skip the LiteRT venv."""
    args = list(session.posargs)
    if "--litert-python" not in args and "--no-litert" not in args and not os.environ.get("MBV3_NO_LITERT"):
        python = litert_python(session)
        args += ["--litert-python", python] if python else []
    run(session, str(BIN / "mbv3"), "bench", *args)


@nox.session(name="eval")
def eval_(session: nox.Session) -> None:
    """Top-1/top-5, per-class, confusion PNG: `nox -s eval -- --checkpoint runs/train/model.safetensors`."""
    run(session, str(BIN / "mbv3"), "eval", *session.posargs)


@nox.session
def harness(session: nox.Session) -> None:
    """Device harness: `nox -s harness -- --target adb --serial X --model dist/android/...`
    (leading options mean `run`; also `-- build --target linux-aarch64`, `-- devices`)."""
    args = list(session.posargs) or ["--help"]
    if args[0].startswith("-") and args[0] not in ("-h", "--help"):
        args = ["run", *args]
    run(session, str(BIN / "python"), "-m", "mobile_harness", *args)
