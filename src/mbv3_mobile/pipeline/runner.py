"""The staged pipeline runner (pipelines are data: see `pipeline.spec`).

A stage instance's cache key is the sha256 of: its name and function, the source of every project
module that function can reach (`core.code`), the values of the parameters it declares, the
content of the files/folders its `deps` parameters name, the keys and recorded output sha256s of its upstream instances, its
optional `<function>_fingerprint` hook, and the tool versions. Gates are in no key: a verify stage
records figures and the name of its gate table, and the runner checks them against the pipeline's
current gates on every run, fresh or cached, so changing a threshold re-judges without
re-measuring and leaves quantize/lower cached.

A stage's folder `<cache>/<pipeline>/<stage>/<key>/` is written atomically and durably and holds
`stage.json` with the sha256 of every file the stage wrote. An entry is reused only after those
hashes check out; a damaged entry is reported, discarded and rebuilt, so the cache never hands back
bytes it did not verify. A per-entry file lock stops two runs building the same stage at once (the
second waits, then reuses the first one's result).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mbv3_mobile.core.atomic import atomic_dir
from mbv3_mobile.core.code import code_fingerprint
from mbv3_mobile.core.hashing import sha256_file
from mbv3_mobile.pipeline.spec import GateFailure, PipelineError, PipelineSpec, StageSpec
from mbv3_mobile.verify.gates import FAIL, INCONCLUSIVE, GateRule, blocking, check_gates

STAGE_META = "stage.json"


@dataclass
class StageResult:
    name: str
    variant: str | None
    key: str
    dir: Path
    meta: dict
    cached: bool
    seconds: float
    outs: dict[str, str] | None = None

    def out(self, name: str) -> Path:
        """A declared output of the stage (`outs` in the TOML), by its declared name."""
        if not self.outs or name not in self.outs:
            raise PipelineError(f"stage {self.name!r} declares no output {name!r} (has: {sorted(self.outs or {})})")
        return self.dir / self.outs[name]

    @property
    def label(self) -> str:
        return f"{self.name}[{self.variant}]" if self.variant else self.name


class PipelineResults(dict):
    """What `run_pipeline` returns: {"stage" or "stage[variant]": StageResult} in run order (and
    "_total"), with lookups by stage name for the code that reads a finished run."""

    def stage(self, name: str, variant: str | None = None) -> StageResult:
        label = f"{name}[{variant}]" if variant is not None else name
        if label not in self:
            raise PipelineError(f"the run has no {label!r} (stages: {', '.join(k for k in self if k != '_total')})")
        return self[label]

    def variants(self, name: str) -> dict[str, StageResult]:
        """Every instance of a foreach stage, by variant, in run order."""
        return {r.variant: r for r in self.values() if r.name == name and r.variant is not None}


@dataclass
class StageContext:
    """What a stage function gets: its parameters, its upstream results, and a folder to write."""

    pipeline: PipelineSpec
    stage: StageSpec
    variant: str | None
    params: dict[str, Any]
    inputs: dict[str, StageResult]  # by upstream stage name; `stage[variant]` for every variant of a foreach stage
    all_results: dict[str, StageResult]
    out_dir: Path
    progress: bool = True

    def log(self, message: str) -> None:
        label = f"{self.stage.name}[{self.variant}]" if self.variant else self.stage.name
        print(f"[{self.pipeline.name}:{label}] {message}", flush=True)

    def out(self, name: str) -> Path:
        """Where this stage writes its declared output `name`."""
        if name not in self.stage.outs:
            raise PipelineError(f"stage {self.stage.name!r} declares no output {name!r} in {self.pipeline.path}")
        return self.out_dir / self.stage.outs[name]

    def upstream(self, stage: str, variant: str | None = None) -> StageResult:
        """An input by stage name: its same-variant instance, or the named `variant` of a foreach
        stage this (non-foreach) stage reads every variant of."""
        label = f"{stage}[{variant}]" if variant is not None else stage
        if label in self.inputs:
            return self.inputs[label]
        if variant is not None and stage in self.inputs and self.inputs[stage].variant == variant:
            return self.inputs[stage]
        raise PipelineError(f"stage {self.stage.name!r} reads no {label!r}: declare it in `inputs` ({self.pipeline.path})")

    @property
    def resolved(self):
        """The resolve stage's model (`contracts.ResolvedModel`)."""
        from mbv3_mobile.pipeline.contracts import ResolvedModel

        return ResolvedModel.of(self.upstream("resolve"))

    @property
    def gates(self) -> dict[str, tuple[GateRule, ...]]:
        return self.pipeline.gates


@dataclass
class StageRun:
    """One stage instance of a run: everything its cache key covers and its function receives."""

    spec: PipelineSpec
    stage: StageSpec
    fn: Callable
    code: str
    variant: str | None
    params: dict[str, Any]  # the stage's declared parameters (and its deps)
    inputs: dict[str, StageResult]
    results: dict[str, StageResult]
    versions: dict[str, str]
    progress: bool

    @property
    def label(self) -> str:
        return f"{self.stage.name}[{self.variant}]" if self.variant else self.stage.name

    def context(self, out_dir: Path) -> StageContext:
        return StageContext(self.spec, self.stage, self.variant, self.params, self.inputs, self.results, out_dir,
                            self.progress)

    def key(self, all_params: dict[str, Any]) -> tuple[str, dict]:
        """(key, key data): everything the stage's output depends on."""
        hook = getattr(sys.modules[self.fn.__module__], f"{self.fn.__name__}_fingerprint", None)
        key_data = {
            "pipeline": self.spec.name, "stage": self.stage.name, "variant": self.variant, "run": self.stage.run,
            "code": self.code, "params": self.params,
            "deps": {p: path_fingerprint(all_params[p]) for p in self.stage.deps},
            # an input is its key and the bytes it holds: some tools write different bytes for the same
            # input (ORT's .ort serialiser does), so a rebuilt upstream entry must re-run what measured it
            "inputs": {k: [v.key, v.meta.get("files")] for k, v in sorted(self.inputs.items())},
            "fingerprint": hook(self.context(Path())) if hook else None, "versions": self.versions,
        }
        return hashlib.sha256(json.dumps(key_data, sort_keys=True, default=str).encode()).hexdigest()[:16], key_data


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for dist in ("mbv3-mobile", "torch", "executorch", "torchao", "coremltools", "onnx", "onnxsim", "onnxruntime",
                 "onnxscript", "numpy", "pillow"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def resolve_callable(dotted: str) -> Callable:
    module_name, _, attr = dotted.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise PipelineError(f"stage function {dotted!r} cannot be imported: {exc}") from None


def cache_dir() -> Path:
    env = os.environ.get("MBV3_CACHE")
    return Path(env) / "pipelines" if env else Path(".cache") / "pipelines"


def path_fingerprint(value: Any) -> Any:
    """Content identity of a file/folder parameter: a file's sha256; a folder's sorted (path,
    size, mtime) list, hashed (re-hashing thousands of pictures on every run would cost more than
    the stage); anything else (a named dataset, empty) stands for itself."""
    if not isinstance(value, str) or not value:
        return value
    path = Path(value)
    if path.is_file():
        return "file:" + sha256_file(path)
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            st = p.stat()
            h.update(f"{p.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return "dir:" + h.hexdigest()
    return value


def check_params(spec: PipelineSpec, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The effective parameters, or a PipelineError naming an unknown or empty one."""
    params = {**spec.params, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    unknown = set(overrides or {}) - set(spec.params)
    if unknown:
        raise PipelineError(f"unknown parameter(s) for pipeline {spec.name!r}: {sorted(unknown)}")
    for st in spec.stages:
        if st.foreach and not params[st.foreach]:
            flag = "--" + st.foreach.replace("_", "-")
            default = ",".join(map(str, spec.params[st.foreach])) or "..."
            raise PipelineError(f"{flag} is empty: pipeline {spec.name!r} builds one artifact per value, so give at "
                                f"least one (default: {flag} {default})")
    return params


def preflight(spec: PipelineSpec, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The effective parameters, after the pipeline's `checks` (seconds, nothing written): every
    stage function imports and every option and input is validated before the first stage runs."""
    params = check_params(spec, overrides)
    for st in spec.stages:  # a stage that cannot be imported fails now, not after the stages before it
        resolve_callable(st.run)
    for dotted in spec.settings.get("checks", []):
        resolve_callable(dotted)(spec, params)
    return params


def stage_runs(spec: PipelineSpec, params: dict[str, Any], results: dict[str, StageResult], *,
               progress: bool = True):
    """Every stage instance in order, as `StageRun`s. The caller puts each instance's result into
    `results` before taking the next (later instances read their inputs from it)."""
    versions = tool_versions()
    for st in spec.stages:
        fn = resolve_callable(st.run)
        code = code_fingerprint(fn.__module__)
        for variant in (list(params[st.foreach]) if st.foreach else [None]):
            inputs = {label: r for dep in st.inputs for label, r in _upstream(results, dep, variant).items()}
            stage_params = {p: params[p] for p in st.param_names(variant)}
            for p in st.deps:
                stage_params.setdefault(p, params[p])
            yield StageRun(spec, st, fn, code, variant, stage_params, inputs, results, versions, progress)


def run_pipeline(spec: PipelineSpec, overrides: dict[str, Any] | None = None, *, progress: bool = True,
                 force: bool = False) -> PipelineResults:
    """Run (or reuse) every stage; returns results keyed 'stage' or 'stage[variant]'."""
    params = preflight(spec, overrides)
    results = PipelineResults()
    t_start = time.perf_counter()
    for run in stage_runs(spec, params, results, progress=progress):
        result = _run_stage(run, params, force=force)
        results[result.label] = result
        _apply_gates(spec, result, params.get("inconclusive", "fail"))
    total = time.perf_counter() - t_start
    results["_total"] = StageResult("_total", None, "", Path(), {"seconds": total}, False, total)
    return results


def plan_pipeline(spec: PipelineSpec, overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """Every stage instance's cache key, without building anything, as a run computes it: the
    parameters after the pipeline's checks, and for each cached upstream entry the files it recorded
    (a key covers its inputs' bytes). Below an entry that is not cached the keys cannot be known
    before it is built; they differ from every cached key, i.e. the plan says those stages rebuild
    (a run may still reuse them if the rebuilt entry writes the same bytes)."""
    params = preflight(spec, overrides)
    results: dict[str, StageResult] = {}
    for run in stage_runs(spec, params, results, progress=False):
        key, _ = run.key(params)
        meta_path = cache_dir() / spec.name / run.label / key / STAGE_META
        try:  # read, not verified: the plan reports, a run verifies before it reuses
            meta = json.loads(meta_path.read_text()) if run.stage.cache and meta_path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            meta = {}
        results[run.label] = StageResult(run.stage.name, run.variant, key, Path(), meta, bool(meta), 0.0,
                                         run.stage.outs)
    return {label: r.key for label, r in results.items()}


def _run_stage(run: StageRun, params: dict[str, Any], *, force: bool) -> StageResult:
    key, key_data = run.key(params)
    target = cache_dir() / run.spec.name / run.label / key
    if not run.stage.cache:
        return _build(run, target, key, key_data, keep=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent run building this entry finishes first
        if not force:
            reused = _reuse(run, target)
            if reused is not None:
                return reused
        return _build(run, target, key, key_data, keep=True)


def _reuse(run: StageRun, target: Path) -> StageResult | None:
    """The cached entry if every file it recorded still has its recorded sha256; else None (and
    a damaged entry is removed, saying why)."""
    pipeline, label, st = run.spec.name, run.label, run.stage
    meta_path = target / STAGE_META
    if not meta_path.is_file():
        return None
    problem = None
    try:
        meta = json.loads(meta_path.read_text())
        recorded = meta.get("files")
        if not isinstance(recorded, dict):
            problem = "it records no file hashes (written by an older version)"
        else:
            present = {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file() and p.name != STAGE_META}
            for rel, digest in sorted(recorded.items()):
                f = target / rel
                if not f.is_file():
                    problem = f"{rel} is missing"
                    break
                if sha256_file(f) != digest:
                    problem = f"{rel} does not match its recorded sha256"
                    break
            else:
                extra = sorted(present - set(recorded))
                if extra:
                    problem = f"{extra[0]} was added after the stage finished"
    except (OSError, json.JSONDecodeError) as exc:
        problem = f"{STAGE_META} is unreadable ({exc})"
    if problem:
        print(f"[{pipeline}:{label}] cache entry {target.name} is damaged: {problem}; discarding it and rebuilding",
              flush=True)
        shutil.rmtree(target, ignore_errors=True)
        return None
    print(f"[{pipeline}:{label}] cached ({target.name}, {len(meta['files'])} file(s) verified)", flush=True)
    return StageResult(st.name, run.variant, target.name, target, meta, True, 0.0, st.outs)


def _build(run: StageRun, target: Path, key: str, key_data: dict, *, keep: bool) -> StageResult:
    """Run the stage into a temp folder; a cached stage's folder becomes `target` (atomically), an
    uncached one's (publish) is dropped once the stage has written its own outputs."""
    st = run.stage
    t0 = time.perf_counter()
    with (atomic_dir(target) if keep else tempfile.TemporaryDirectory(prefix="mbv3-stage-")) as tmp:
        tmp = Path(tmp)
        ctx = run.context(tmp)
        ctx.log("running")
        meta = run.fn(ctx) or {}
        missing = [f"{name} ({file})" for name, file in st.outs.items() if not (tmp / file).exists()]
        if missing:
            raise PipelineError(f"stage {st.name!r} did not write its declared output(s): {', '.join(missing)}")
        files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        meta = {"stage": st.name, "variant": run.variant, "key": key, "key_data": key_data,
                "seconds": round(time.perf_counter() - t0, 3), **meta, "files": files}
        (tmp / STAGE_META).write_text(json.dumps(meta, indent=2, default=str))
    seconds = time.perf_counter() - t0
    ctx.log(f"done in {seconds:.1f} s")
    return StageResult(st.name, run.variant, key, target if keep else Path(), meta, False, seconds, st.outs)


def _apply_gates(spec: PipelineSpec, result: StageResult, inconclusive: str) -> None:
    """A verify stage's figures against the pipeline's current gate table (fresh or cached).
    `inconclusive`: "fail" (a gate the pictures cannot resolve blocks publishing) or "warn"."""
    table = result.meta.get("gate")
    if not table:
        return
    rules = spec.gates.get(table)
    if rules is None:
        raise PipelineError(f"{spec.path}: stage {result.label} is judged by [gates.{table}], which is not declared")
    judged = check_gates(result.meta["figures"], rules)
    result.meta["judged"] = judged  # in memory only: gates are re-judged on every run
    what = result.meta.get("what", result.label)
    stops = blocking(judged, inconclusive)
    for j in judged:
        if j["verdict"] == INCONCLUSIVE and j not in stops:
            print(f"[{spec.name}:{result.label}] warning: gate inconclusive: {j['message']}", flush=True)
    if stops:
        raise GateFailure(f"{what}: gate {'failed' if any(j['verdict'] == FAIL for j in stops) else 'inconclusive'}, "
                          "nothing published:\n  - " + "\n  - ".join(f"{j['verdict']}: {j['message']}" for j in stops)
                          + f"\nfigures:\n{_figures_text(table, result.meta['figures'])}"
                          + (f"\n{result.meta['hint']}" if result.meta.get("hint") else ""))


def _figures_text(table: str, figures: dict) -> str:
    """The figures in the words of the task whose table judged them (`<task>.<table>`), else as numbers."""
    task_name, dot, _ = table.partition(".")
    if dot:
        from mbv3_mobile.tasks import TaskError, get_task

        try:
            return get_task(task_name).module("figures").text(figures)
        except TaskError:
            pass
    return "\n".join(f"  {k:<16} {v:.6g}" for k, v in figures.items() if isinstance(v, int | float))


def _upstream(results: dict[str, StageResult], dep: str, variant: str | None) -> dict[str, StageResult]:
    """The same-variant instance of a foreach stage (as `dep`), a plain stage (as `dep`), or, for a
    stage that is not itself per-variant, every variant of a foreach stage (as `dep[variant]`)."""
    if variant is not None and f"{dep}[{variant}]" in results:
        return {dep: results[f"{dep}[{variant}]"]}
    if dep in results:
        return {dep: results[dep]}
    every = {k: r for k, r in results.items() if r.name == dep and r.variant is not None}
    if not every:
        raise PipelineError(f"stage {dep!r} has no result for variant {variant!r}")
    return every
