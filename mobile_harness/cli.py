"""python -m mobile_harness {build,run,devices,report} ...

  build    build (or reuse) the native runner:      --target host|linux-aarch64|android-arm64
  run      benchmark models on a target:            --target host|adb|ios --model PATH [...]
  devices  list adb devices and their state
  report   rewrite results.md / latency.png from a results.json

Errors a person can fix print one message and exit 2; nothing is written for a failed run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from mbv3_mobile.core.errors import UserError

from .bench import BenchPlan, find_models
from .build import TARGETS as BUILD_TARGETS
from .build import ensure_runner, runner_from_dir
from .errors import HarnessError
from .report import markdown, native_vs_python, plot, recommended_threads, write_report


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _plan(a: argparse.Namespace) -> BenchPlan:
    return BenchPlan(threads=[t.strip() for t in a.threads.split(",") if t.strip()], rounds=a.rounds, iters=a.iters,
                     warmup=a.warmup, cooldown_s=a.cooldown_s, timeout_s=a.timeout_s, etdump=a.etdump)


def cmd_build(a: argparse.Namespace) -> int:
    b = ensure_runner(a.target, rebuild=a.rebuild, log=_log)
    print(json.dumps(b.to_dict(), indent=2))
    return 0


def cmd_devices(a: argparse.Namespace) -> int:
    from .adb import Adb

    adb = Adb(a.adb, server_port=a.adb_port)
    devs = adb.devices()
    if not devs:
        print("no devices attached (adb devices lists none)")
    for serial, state in devs:
        print(f"{serial}\t{state}")
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    plan = _plan(a)
    out = Path(a.out)
    if a.target == "ios":
        from .targets.ios import run_ios

        models = find_models(a.model, suffixes=(".mlpackage", ".mlmodel"))
        results = run_ios(models, plan, simulator=a.simulator, device=a.device, compute_units=a.compute_units,
                          log=_log)
        write_report(results, out)
        print(f"[harness] wrote {out}/results.json, results.md, latency.png")
        return 0
    models = find_models(a.model)
    if a.runner_dir:
        runner = runner_from_dir(a.runner_dir)
    else:
        runner = ensure_runner(a.runner_target or ("host" if a.target == "host" else "android-arm64"), log=_log)
    out.parent.mkdir(parents=True, exist_ok=True)
    artifacts = Path(tempfile.mkdtemp(prefix=f".{out.name}.artifacts.", dir=out.parent))
    try:
        if a.target == "host":
            from .targets.host import run_host

            results = run_host(models, plan, runner, python_runtime=not a.no_python, out_dir=artifacts, log=_log)
        else:
            from .adb import Adb
            from .targets.adb import run_adb

            adb = Adb(a.adb, server_port=a.adb_port)
            results = run_adb(models, plan, runner, adb=adb, serial=a.serial, workdir=a.workdir, out_dir=artifacts,
                              log=_log)
        write_report(results, out, artifacts=artifacts)
    finally:
        shutil.rmtree(artifacts, ignore_errors=True)
    print(f"[harness] wrote {out}/results.json, results.md, latency.png")
    for (variant, threads), ratio in native_vs_python(results).items():
        print(f"[harness] {variant} {threads} threads: native/python p50 ratio {ratio:.2f}")
    for pick in recommended_threads(results):
        print(f"[harness] {pick['variant']} ({pick['runtime']}): use {pick['threads']} thread(s) on this {a.target} "
              f"target ({pick['speedup_vs_fewest']:.2f}x vs 1; Kotlin: Module.load(path, Module.LOAD_MODE_MMAP, "
              f"{pick['threads']}))")
    unreliable = [m for m in results["measurements"] if not m["reliable"]]
    if unreliable:
        print(f"[harness] {len(unreliable)} of {len(results['measurements'])} measurements flagged unreliable "
              "(see results.md)")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    path = Path(a.results)
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise HarnessError(f"cannot read {path}: {e}") from e
    out = path.parent
    fix = "pass the results.json that `python -m mobile_harness run` wrote"
    if not isinstance(results, dict):
        raise HarnessError(f"{path} is not a harness results.json (it holds a {type(results).__name__}): {fix}")
    try:
        text = markdown(results)
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        what = f"no {e} entry" if isinstance(e, KeyError) else "an entry of the wrong kind"
        raise HarnessError(f"{path} is not a harness results.json ({what}): {fix}") from None
    (out / "results.md").write_text(text)
    plot(results, out / "latency.png")
    print(f"[harness] rewrote {out}/results.md and latency.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mobile_harness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build (or reuse) the native runner")
    b.add_argument("--target", choices=BUILD_TARGETS, default="host")
    b.add_argument("--rebuild", action="store_true", help="ignore the cached build")
    b.set_defaults(func=cmd_build)

    d = sub.add_parser("devices", help="list adb devices")
    d.add_argument("--adb", help="adb binary (default: $ADB or adb on PATH)")
    d.add_argument("--adb-port", type=int, help="adb server port (default: adb's own, 5037)")
    d.set_defaults(func=cmd_devices)

    r = sub.add_parser("run", help="benchmark models on a target")
    r.add_argument("--target", choices=("host", "adb", "ios"), required=True)
    r.add_argument("--model", action="append", required=True,
                   help=".pte/.bpte (host, adb) or .mlpackage (ios) file, or a folder of them; repeatable")
    r.add_argument("--out", default="runs/harness", help="report folder (replaced on success)")
    r.add_argument("--threads", default="1,2,4,all", help="thread counts to sweep, comma-separated")
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--iters", type=int, default=50)
    r.add_argument("--warmup", type=int, default=5)
    r.add_argument("--cooldown-s", type=float, default=10.0, help="pause between rounds")
    r.add_argument("--timeout-s", type=float, default=300.0, help="limit for one runner invocation")
    r.add_argument("--etdump", action="store_true", help="also record an ETDump (per-op profile) per model")
    r.add_argument("--runner-dir", help="use this runner folder (binary + libraries) instead of building one")
    r.add_argument("--runner-target", choices=BUILD_TARGETS, help="which runner build to use/make")
    r.add_argument("--no-python", action="store_true", help="host: skip the Python runtime comparison")
    r.add_argument("--serial", help="adb: device serial (required when several are attached)")
    r.add_argument("--workdir", default="/data/local/tmp/mbv3", help="adb: device folder (deleted at the end)")
    r.add_argument("--adb", help="adb binary (default: $ADB or adb on PATH)")
    r.add_argument("--adb-port", type=int, help="adb server port (default: adb's own, 5037)")
    r.add_argument("--simulator", help="ios: simulator name or UDID (default: a booted one, else the newest iPhone)")
    r.add_argument("--device", help="ios: physical device UDID (uses xcrun devicectl)")
    r.add_argument("--compute-units", default="cpuOnly,cpuAndGPU,cpuAndNeuralEngine",
                   help="ios: MLComputeUnits to time, comma-separated")
    r.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="rewrite results.md / latency.png from results.json")
    rep.add_argument("results")
    rep.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
