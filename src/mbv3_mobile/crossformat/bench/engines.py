"""One runtime at one thread count, ready to time: the rows come from the format registry
(`bench_runtimes` hooks), plus eager PyTorch, LiteRT and the native runner."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mbv3_mobile.crossformat.bench.common import BenchError
from mbv3_mobile.pipeline.contracts import ResolvedModel


@dataclass
class Engine:
    key: str
    once: object  # () -> np.ndarray logits; one timed inference
    keep: list = field(default_factory=list)  # objects whose lifetime must span the engine's
    native: object = None  # (iters) -> latencies from the runner's own clock

    def block(self, iters: int) -> list[float]:
        if self.native is not None:
            return self.native(iters)
        lat = []
        for _ in range(iters):
            t0 = time.perf_counter()
            self.once()
            lat.append((time.perf_counter() - t0) * 1e3)
        return lat


@dataclass
class Runtime:
    """One bench row: a model file and how to run it. `opener` ("module:function", called as
    (file, threads, x numpy (1, 3, R, R)) -> (one inference, objects to keep)) runs in this process
    and, alone, in the fresh-process probe; `native` rows run in mobile_harness's C++ runner."""

    key: str
    label: str
    precision: str
    file: Path
    opener: str | None = None
    native: bool = False
    format: str | None = None
    pictures: Path | None = None  # real pictures (numpy, normalised) the format bundled with this file
    details: dict = field(default_factory=dict)  # what the format reports about the file (e.g. delegation)

    @property
    def bytes(self) -> int:
        return self.file.stat().st_size


@dataclass
class Artifacts:
    model_file: Path  # resolved checkpoint (eager)
    runtimes: dict[str, Runtime]  # in report order
    resolved: ResolvedModel
    runs: list  # crossformat.formats.FormatRun, one per format timed

    @property
    def results(self) -> dict[str, dict]:
        """pipeline name -> its stage results."""
        return {run.pipeline.name: run.results for run in self.runs}


EAGER_OPENER = "mbv3_mobile.crossformat.bench.openers:open_eager"
LITERT_OPENER = "mbv3_mobile.crossformat.bench.openers:open_litert"


def opener(dotted: str):
    import importlib

    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)


def open_engine(rt: Runtime, threads: int, x: torch.Tensor, *, runner=None, warmup: int = 3) -> Engine:
    """Load one runtime at `threads` threads, ready to run `x` (1, 3, R, R)."""
    if rt.native:
        return _native_engine(rt, threads, runner, warmup)
    if not rt.opener:
        raise BenchError(f"runtime {rt.key!r} has neither an opener nor a native runner")
    once, keep = opener(rt.opener)(str(rt.file), threads, x.numpy())
    return Engine(rt.key, once, keep)


def _native_engine(rt: Runtime, threads: int, runner, warmup: int) -> Engine:
    from mobile_harness.targets.host import run_runner

    def block(iters: int) -> list[float]:
        doc = run_runner(runner, rt.file, ["--threads", str(threads), "--iters", str(iters), "--warmup", str(warmup)],
                         timeout_s=300)
        return [float(v) for v in doc["latencies_ms"]]

    def once():
        with tempfile.TemporaryDirectory(prefix="mbv3-bench-") as tmp:
            dump = Path(tmp) / "out.bin"
            run_runner(runner, rt.file, ["--threads", str(threads), "--iters", "1", "--warmup", "0",
                                         "--dump-outputs", str(dump)], timeout_s=300)
            return np.fromfile(dump, dtype=np.float32)

    return Engine(rt.key, once, native=block)


def convert_litert(model_file: Path, p: dict, dest: Path) -> tuple[Path | None, str | None, float]:
    """(tflite path, reason it could not be made, conversion seconds). litert-torch is not part of
    the pinned stack (it pulls jax, transformers, ...); it converts in-process when importable, or
    in `litert_python`, an interpreter whose environment has it."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return None, ("ai-edge-litert is not installed in this environment (pip install ai-edge-litert==2.3.0; "
                      "a converted model also needs litert-torch, which resolves with torch 2.13.0)"), 0.0
    # The LiteRT venv does not install this project: put its source on the path.
    script = ("import sys, torch, litert_torch\n"
              f"sys.path.insert(0, {str(Path(__file__).resolve().parents[3])!r})\n"
              "from mbv3_mobile.tasks import load_task_checkpoint\n"
              "ck = load_task_checkpoint(sys.argv[1]); r = ck.preprocessing.resolution\n"
              "litert_torch.convert(ck.model.eval(), (torch.zeros(1, 3, r, r),)).export(sys.argv[2])\n")
    python = p.get("litert_python") or sys.executable
    if not p.get("litert_python"):
        try:
            import litert_torch  # noqa: F401
        except ImportError:
            return None, ("litert-torch (the PyTorch -> LiteRT converter) is not installed here; it is not in the "
                          "pinned stack. Pass --litert-python PATH of an interpreter whose environment has "
                          "litert-torch==0.10.0 (it installs beside torch 2.13.0)"), 0.0
    out = dest / "model_fp32.tflite"
    t0 = time.perf_counter()
    proc = subprocess.run([python, "-c", script, str(model_file), str(out)], capture_output=True, text=True,
                          timeout=900)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0 or not out.is_file():
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return None, f"litert-torch conversion failed with {python}: {tail}", seconds
    return out, None, seconds
