"""Host target: the native runner on this machine, and ExecuTorch's Python runtime beside it.

The Python runtime is timed the same way (first inference, warm-up, N timed iterations, same
deterministic inputs, same thread pool size), so the two are comparable as a ratio; its outputs
are checked against the runner's to catch a runner that is fast because it is wrong."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from ..bench import BenchPlan, add_measurement, new_results, parse_runner_output
from ..build import RunnerBuild
from ..errors import HarnessError, RunnerError, RunnerTimeout
from ..runner_inputs import synthetic_input


def run_runner(runner: RunnerBuild, model: Path, args: list[str], *, timeout_s: float, env=None,
               wrapper: list[str] | None = None) -> dict:
    """One local runner invocation -> its parsed JSON. `wrapper` prefixes the command (e.g. qemu)."""
    with tempfile.TemporaryDirectory(prefix="mbv3-run-") as tmp:
        out_json = Path(tmp) / "result.json"
        cmd = [*(wrapper or []), str(runner.binary), "--model", str(model), "--json", str(out_json), *args]
        env = dict(os.environ if env is None else env)
        env["LD_LIBRARY_PATH"] = str(runner.deploy_dir)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired:
            raise RunnerTimeout(f"{model.name}: runner did not finish in {timeout_s:g} s and was killed; "
                                "raise --timeout-s or lower --iters") from None
        stdout = out_json.read_text() if out_json.is_file() else proc.stdout
        code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        return parse_runner_output(stdout, code, where=f"{model.name} on host")


def python_runtime_round(model: Path, threads: int, plan: BenchPlan) -> tuple[dict, np.ndarray]:
    """Time ExecuTorch's Python runtime like the runner times itself; also return its output."""
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    portable_lib._unsafe_reset_threadpool(threads)
    t0 = time.perf_counter()
    program = Runtime.get().load_program(str(model))
    method = program.load_method("forward")
    load_ms = (time.perf_counter() - t0) * 1e3
    meta = method.metadata
    inputs = []
    for i in range(meta.num_inputs()):
        tm = meta.input_tensor_meta(i)
        inputs.append(torch.from_numpy(synthetic_input(i, tuple(tm.sizes()))))
    t0 = time.perf_counter()
    out = method.execute(inputs)
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(plan.warmup):
        method.execute(inputs)
    lat = []
    for _ in range(plan.iters):
        t0 = time.perf_counter()
        out = method.execute(inputs)
        lat.append((time.perf_counter() - t0) * 1e3)
    return ({"load_ms": load_ms, "first_inference_ms": first_ms, "latencies_ms": lat, "threads": threads},
            out[0].detach().numpy().copy())


def run_host(models: list[Path], plan: BenchPlan, runner: RunnerBuild, *, python_runtime: bool = True,
             out_dir: Path | None = None, log=print) -> dict:
    cpus = os.cpu_count() or 1
    results = new_results("host", plan, runner=runner.to_dict(),
                          device={"model": "host", "abi": runner.arch, "cpus": cpus}, profiles={})
    if plan.etdump and out_dir is not None:
        from ..profile import top_ops

        (out_dir / "etdump").mkdir(parents=True, exist_ok=True)
        for model in models:
            path = out_dir / "etdump" / f"{model.stem}.etdump"
            run_runner(runner, model, [*plan.runner_args(max(plan.thread_counts(cpus))), "--etdump", str(path)],
                       timeout_s=plan.timeout_s)
            results["profiles"][model.name] = top_ops(path)
    for model in models:
        for threads in plan.thread_counts(cpus):
            rounds, last_out = [], None
            for r in range(plan.rounds):
                if r and plan.cooldown_s:
                    time.sleep(plan.cooldown_s)
                with tempfile.TemporaryDirectory(prefix="mbv3-out-") as tmp:
                    dump = Path(tmp) / "outputs.bin"
                    doc = run_runner(runner, model, [*plan.runner_args(threads), "--dump-outputs", str(dump)],
                                     timeout_s=plan.timeout_s)
                    last_out = np.fromfile(dump, dtype=np.float32) if doc["outputs"][0]["dtype"] == "float32" else None
                rounds.append(doc)
                log(f"[harness] host native {model.name} threads={threads} round {r + 1}: p50 {doc['p50_ms']:.3f} ms")
            add_measurement(results, variant=model.name, model=str(model), runtime="native", threads=threads,
                            rounds=rounds, verification=rounds[-1].get("verification"))
            if not python_runtime or model.suffix != ".pte":
                continue
            py_rounds = []
            for _ in range(plan.rounds):
                doc, py_out = python_runtime_round(model, threads, plan)
                py_rounds.append(doc)
            diff = None
            if last_out is not None and rounds[-1]["input"] == "synthetic":
                if py_out.size != last_out.size:
                    raise RunnerError(f"{model.name}: the runner produced {last_out.size} outputs, the Python "
                                      f"runtime {py_out.size}")
                diff = float(np.max(np.abs(py_out.reshape(-1) - last_out)))
                if diff > 1e-3:
                    raise HarnessError(f"{model.name}: native runner and Python runtime outputs differ by {diff:.3g} "
                                       "on the same input; the runner build is broken (rebuild with --rebuild)")
            add_measurement(results, variant=model.name, model=str(model), runtime="python", threads=threads,
                            rounds=py_rounds, max_abs_diff_vs_native=diff)
    return results
