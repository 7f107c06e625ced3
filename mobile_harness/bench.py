"""The benchmark plan shared by every target, the runner's JSON contract, and result assembly."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import HarnessError, RunnerError, VerificationError
from .stats import reliability_flags, summarize_rounds

RESULT_SCHEMA = "mbv3-harness/1"
RUNNER_SCHEMA = "mbv3-runner/1"
MODEL_SUFFIXES = (".pte", ".bpte")
# Fields of one runner invocation kept in the results (the rest is per-model, recorded once).
ROUND_FIELDS = ("load_ms", "first_inference_ms", "latencies_ms", "p50_ms", "p90_ms", "min_ms", "threads",
                "checksum", "verification", "etdump")


@dataclass
class BenchPlan:
    threads: list[str] = field(default_factory=lambda: ["1", "2", "4", "all"])
    rounds: int = 3
    iters: int = 50
    warmup: int = 5
    cooldown_s: float = 10.0
    timeout_s: float = 300.0  # one runner invocation
    etdump: bool = False

    def __post_init__(self) -> None:
        for t in self.threads:
            if t != "all" and (not str(t).isdigit() or int(t) < 1):
                raise HarnessError(f"thread counts are positive integers or 'all', got {t!r}")
        if self.rounds < 1 or self.iters < 1 or self.warmup < 0 or self.cooldown_s < 0 or self.timeout_s <= 0:
            raise HarnessError("rounds and iters must be >= 1, warmup and cooldown >= 0, timeout > 0")

    def thread_counts(self, cpus: int | None) -> list[int]:
        """'all' -> the CPU count; counts above it are dropped (they would only oversubscribe)."""
        cpus = cpus or 1
        out = set()
        for t in self.threads:
            n = cpus if t == "all" else int(t)
            if n <= cpus:
                out.add(n)
        return sorted(out) or [cpus]

    def runner_args(self, threads: int) -> list[str]:
        return ["--threads", str(threads), "--iters", str(self.iters), "--warmup", str(self.warmup)]

    def to_dict(self) -> dict:
        return asdict(self)


def find_models(paths: list[str | Path], suffixes: tuple[str, ...] = MODEL_SUFFIXES) -> list[Path]:
    """Model files from files or folders (a folder contributes its files with a known suffix)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and p.suffix not in suffixes:  # a folder of models (searched recursively)
            hits = sorted(x for x in p.rglob("*") if x.suffix in suffixes
                          and not any(parent.suffix in suffixes for parent in x.relative_to(p).parents))
            if not hits:
                raise HarnessError(f"{p} holds no {' / '.join(suffixes)} model; export one first "
                                   "(e.g. nox -s export_android)")
            found.extend(hits)
        elif p.exists():
            if p.suffix not in suffixes:
                raise HarnessError(f"{p} is not a {' / '.join(suffixes)} model")
            found.append(p)
        else:
            raise HarnessError(f"model {p} does not exist")
    return found


def parse_runner_output(stdout: str, exit_code: int, *, where: str) -> dict:
    """The runner's JSON (last line that parses), checked; RunnerError on anything unusable."""
    doc = None
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                doc = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
    if exit_code != 0 or doc is None or doc.get("status") != "ok":
        raise runner_failure(exit_code, doc, stdout, where=where)
    if doc.get("schema") != RUNNER_SCHEMA:
        raise RunnerError(f"{where}: runner speaks {doc.get('schema')!r}, expected {RUNNER_SCHEMA}; rebuild it "
                          "(python -m mobile_harness build --rebuild)")
    lat = doc.get("latencies_ms")
    if not isinstance(lat, list) or not lat or any(not isinstance(x, int | float) or x < 0 for x in lat):
        raise RunnerError(f"{where}: runner output has no valid latencies_ms", output=stdout)
    return doc


def runner_failure(exit_code: int, doc: dict | None, output: str, *, where: str) -> RunnerError:
    if doc and doc.get("status") == "verify_failed":
        v = doc.get("verification", {})
        return VerificationError(
            f"{where}: outputs differ from the bundled expected outputs ({v.get('first_failure')}; max abs diff "
            f"{v.get('max_abs_diff')}, rtol {v.get('rtol')}, atol {v.get('atol')}). The program does not compute "
            "what it was exported to compute: re-export it, or check the delegate/quantization settings.",
            exit_code=exit_code, output=output)
    if doc and doc.get("status") == "error":
        return RunnerError(f"{where}: runner failed (exit {exit_code}): {doc.get('error')}", exit_code=exit_code,
                           output=output)
    if exit_code > 128:
        import signal

        try:
            name = signal.Signals(exit_code - 128).name
        except ValueError:
            name = f"signal {exit_code - 128}"
        return RunnerError(f"{where}: runner crashed ({name}, exit {exit_code}); no result was recorded. "
                           "Rerun with fewer threads or a smaller model to narrow it down, and check `adb logcat` "
                           "for a tombstone.", exit_code=exit_code, output=output)
    tail = " | ".join(output.strip().splitlines()[-3:])
    return RunnerError(f"{where}: runner exited with {exit_code} and printed no result ({tail or 'no output'})",
                       exit_code=exit_code, output=output)


def new_results(target: str, plan: BenchPlan, **extra) -> dict:
    return {"schema": RESULT_SCHEMA, "target": target,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "host": {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version()},
            "plan": plan.to_dict(), "measurements": [], "notes": [], **extra}


def add_measurement(results: dict, *, variant: str, model: str, runtime: str, threads: int, rounds: list[dict],
                    before: dict | None = None, after: dict | None = None, extra_flags: list[str] | None = None,
                    **extra) -> dict:
    summary = summarize_rounds(rounds)
    flags = reliability_flags(summary, rounds, before, after) + list(extra_flags or [])
    m = {"variant": variant, "model": model, "runtime": runtime, "threads": threads,
         "rounds": [{k: r.get(k) for k in ROUND_FIELDS if k in r} for r in rounds],
         "summary": summary, "reliable": not flags, "flags": flags, **extra}
    results["measurements"].append(m)
    return m
