"""The staged pipeline runner. Pipelines are declared as data in `pipelines/*.toml`.

A pipeline is an ordered list of stages. Each stage names a function (`module:function`), the
upstream stages it reads, and the pipeline parameters it depends on; a stage with `foreach = "P"`
runs once per value of list parameter P (e.g. one `quantize` per fp32/ptq/qat), and its downstream
`foreach` stages pair with the same value.

Caching: a stage instance's key is the sha256 of its name, its function's source file, the values
of the parameters it declares, the keys of its upstream instances, its `fingerprint` (content hashes
of input files, computed by the stage's optional `<function>_fingerprint` hook) and the tool
versions. Its output folder `.cache/pipelines/<pipeline>/<stage>/<key>/` is written atomically
(temp folder + rename) and holds `stage.json`; a folder is reused only if that file exists, so an
interrupted run leaves nothing a later run trusts. Change one parameter and only the stages that
declare it, and those downstream of them, run again.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import shutil
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import atomic_dir
from .errors import UserError

STAGE_META = "stage.json"
REPO_ROOT = Path(__file__).resolve().parents[2]


class PipelineError(UserError):
    """A pipeline declaration, parameter or stage failure the user can act on."""


class GateFailure(PipelineError):
    """A verification gate failed: the message holds the report; nothing is published."""


@dataclass(frozen=True)
class StageSpec:
    name: str
    run: str
    inputs: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    variant_params: dict[str, tuple[str, ...]] = field(default_factory=dict)
    foreach: str | None = None
    publish: bool = False  # the final stage: writes the user-facing output folder
    cache: bool = True


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    title: str
    out: str
    params: dict[str, Any]
    stages: tuple[StageSpec, ...]
    gates: dict[str, float]
    path: Path


def pipelines_dir() -> Path:
    env = os.environ.get("MBV3_PIPELINES_DIR")
    return Path(env) if env else REPO_ROOT / "pipelines"


def load_pipeline(name_or_path: str | os.PathLike) -> PipelineSpec:
    path = Path(name_or_path)
    if not path.suffix:
        matches = sorted(pipelines_dir().glob(f"*{name_or_path}.toml"))
        if not matches:
            known = ", ".join(p.stem for p in sorted(pipelines_dir().glob("*.toml")))
            raise PipelineError(f"no pipeline {str(name_or_path)!r} in {pipelines_dir()} (have: {known or 'none'})")
        path = matches[0]
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PipelineError(f"cannot read pipeline {path}: {exc}") from None
    stages = []
    if not data.get("stages") and "name" not in data:
        raise PipelineError(f"{path} declares no pipeline (needs name and [[stages]])")
    for raw in data.get("stages", []):
        unknown = set(raw) - {"name", "run", "inputs", "params", "variant_params", "foreach", "publish", "cache"}
        if unknown:
            raise PipelineError(f"{path}: stage {raw.get('name')!r} has unknown fields {sorted(unknown)}")
        stages.append(StageSpec(
            name=raw["name"], run=raw["run"], inputs=tuple(raw.get("inputs", ())), params=tuple(raw.get("params", ())),
            variant_params={k: tuple(v) for k, v in raw.get("variant_params", {}).items()},
            foreach=raw.get("foreach"), publish=bool(raw.get("publish", False)), cache=bool(raw.get("cache", True)),
        ))
    spec = PipelineSpec(name=data["name"], title=data.get("title", data["name"]), out=data.get("out", f"dist/{data['name']}"),
                        params=dict(data.get("params", {})), stages=tuple(stages), gates=dict(data.get("gates", {})), path=path)
    _validate(spec)
    return spec


def _validate(spec: PipelineSpec) -> None:
    seen: dict[str, StageSpec] = {}
    for st in spec.stages:
        for dep in st.inputs:
            if dep not in seen:
                raise PipelineError(f"{spec.path}: stage {st.name!r} reads {dep!r}, which is not an earlier stage")
        for p in (*st.params, *(p for ps in st.variant_params.values() for p in ps)):
            if p not in spec.params:
                raise PipelineError(f"{spec.path}: stage {st.name!r} declares unknown parameter {p!r}")
        if st.foreach and not isinstance(spec.params.get(st.foreach), list):
            raise PipelineError(f"{spec.path}: stage {st.name!r} foreach={st.foreach!r} must name a list parameter")
        seen[st.name] = st


# ---------------------------------------------------------------- running


@dataclass
class StageResult:
    name: str
    variant: str | None
    key: str
    dir: Path
    meta: dict
    cached: bool
    seconds: float

    def file(self, name: str) -> Path:
        return self.dir / name


@dataclass
class StageContext:
    """What a stage function gets: its parameters, its upstream results, and a folder to write."""

    pipeline: PipelineSpec
    stage: StageSpec
    variant: str | None
    params: dict[str, Any]
    inputs: dict[str, StageResult]
    all_results: dict[str, StageResult]
    out_dir: Path
    gates: dict[str, float]
    progress: bool = True

    def log(self, message: str) -> None:
        label = f"{self.stage.name}[{self.variant}]" if self.variant else self.stage.name
        print(f"[{self.pipeline.name}:{label}] {message}", flush=True)


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for dist in ("mbv3-mobile", "torch", "executorch", "torchao", "coremltools", "onnx", "onnxsim", "onnxruntime", "onnxscript", "numpy"):
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


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _source_hash(fn: Callable) -> str:
    # The stage's module and the package's shared modules change what a stage produces.
    src = Path(inspect.getsourcefile(fn) or "")
    return hashlib.sha256(src.read_bytes()).hexdigest() if src.is_file() else "?"


def cache_dir() -> Path:
    env = os.environ.get("MBV3_CACHE")
    return Path(env) / "pipelines" if env else REPO_ROOT / ".cache" / "pipelines"


def run_pipeline(spec: PipelineSpec, overrides: dict[str, Any] | None = None, *, progress: bool = True,
                 force: bool = False) -> dict[str, StageResult]:
    """Run (or reuse) every stage; returns results keyed 'stage' or 'stage[variant]'."""
    params = {**spec.params, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    unknown = set(overrides or {}) - set(spec.params)
    if unknown:
        raise PipelineError(f"unknown parameter(s) for pipeline {spec.name!r}: {sorted(unknown)}")
    for st in spec.stages:
        if st.foreach and not params[st.foreach]:
            default = ",".join(map(str, spec.params[st.foreach])) or "..."
            raise PipelineError(f"--{st.foreach.replace('_', '-')} is empty: pipeline {spec.name!r} builds one artifact per "
                                f"value, so give at least one (default: --{st.foreach.replace('_', '-')} {default})")
    versions = tool_versions()
    results: dict[str, StageResult] = {}
    t_start = time.perf_counter()
    for st in spec.stages:
        fn = resolve_callable(st.run)
        variants = list(params[st.foreach]) if st.foreach else [None]
        for variant in variants:
            inputs = {label: r for dep in st.inputs for label, r in _upstream(results, dep, variant).items()}
            names = list(st.params) + list(st.variant_params.get(variant, ())) if variant else list(st.params)
            stage_params = {p: params[p] for p in names}
            ctx_probe = StageContext(spec, st, variant, stage_params, inputs, results, Path(), spec.gates, progress)
            fingerprint_fn = getattr(sys.modules[fn.__module__], f"{fn.__name__}_fingerprint", None)
            fingerprint = fingerprint_fn(ctx_probe) if fingerprint_fn else None
            key_data = {
                "pipeline": spec.name, "stage": st.name, "variant": variant, "run": st.run, "source": _source_hash(fn),
                "params": stage_params, "inputs": {k: v.key for k, v in sorted(inputs.items())},
                "fingerprint": fingerprint, "gates": spec.gates, "versions": versions,
            }
            key = hashlib.sha256(json.dumps(key_data, sort_keys=True, default=str).encode()).hexdigest()[:16]
            label = f"{st.name}[{variant}]" if variant else st.name
            target = cache_dir() / spec.name / label / key
            t0 = time.perf_counter()
            if st.cache and not force and (target / STAGE_META).is_file():
                meta = json.loads((target / STAGE_META).read_text())
                results[label] = StageResult(st.name, variant, key, target, meta, True, 0.0)
                print(f"[{spec.name}:{label}] cached ({key})", flush=True)
                continue
            with atomic_dir(target) as tmp:
                ctx = StageContext(spec, st, variant, stage_params, inputs, results, tmp, spec.gates, progress)
                ctx.log("running")
                meta = fn(ctx) or {}
                meta = {"stage": st.name, "variant": variant, "key": key, "key_data": key_data,
                        "seconds": round(time.perf_counter() - t0, 3), **meta}
                (tmp / STAGE_META).write_text(json.dumps(meta, indent=2, default=str))
            results[label] = StageResult(st.name, variant, key, target, meta, False, time.perf_counter() - t0)
            ctx.log(f"done in {time.perf_counter() - t0:.1f} s")
    results["_total"] = StageResult("_total", None, "", Path(), {"seconds": time.perf_counter() - t_start}, False,
                                    time.perf_counter() - t_start)
    return results


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


def variant_results(results: dict[str, StageResult], stage: str) -> dict[str, StageResult]:
    """All `stage[variant]` results of a foreach stage, keyed by variant."""
    return {r.variant: r for k, r in results.items() if r.name == stage and r.variant is not None}


def publish_dir(final: Path, build: Callable[[Path], None]) -> Path:
    """Build the user-facing folder in a temp folder and swap it in only when complete."""
    with atomic_dir(final) as tmp:
        build(tmp)
    return final


def copy_into(src: Path, dst_dir: Path, name: str | None = None) -> Path:
    dst = dst_dir / (name or src.name)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)
    return dst


# ---------------------------------------------------------------- CLI


def parse_overrides(spec: PipelineSpec, argv: list[str]) -> dict[str, Any]:
    """`--calib-images 100 --quant fp32,ptq --no-progress` -> typed values from the pipeline's params."""
    import argparse

    # parity and bench are commands of their own, the rest are `mbv3 export <name>`
    prog = f"mbv3 {spec.name}" if not spec.stages else f"mbv3 export {spec.name}"
    parser = argparse.ArgumentParser(prog=prog, description=spec.title)
    for name, default in spec.params.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, dict):
            continue  # tables are set in the TOML, not on the command line
        if isinstance(default, bool):
            parser.add_argument(flag, dest=name, default=None, action=argparse.BooleanOptionalAction)
        elif isinstance(default, list):
            parser.add_argument(flag, dest=name, default=None, type=lambda s: [v for v in s.split(",") if v],
                                help=f"comma-separated (default: {','.join(map(str, default))})")
        else:
            typ = type(default) if default not in ("", None) else str
            parser.add_argument(flag, dest=name, default=None, type=typ, help=f"default: {default!r}")
    args = parser.parse_args(argv)
    return {k: v for k, v in vars(args).items() if v is not None}


def register_cli(sub) -> None:
    p = sub.add_parser("export", help="run an export pipeline (android, ios, onnx): mbv3 export android --help",
                       add_help=False)
    p.add_argument("pipeline", help="pipeline name in pipelines/ (android, ios, onnx) or a .toml path")
    p.add_argument("--force", action="store_true", help="rerun every stage, ignoring the cache")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_export, passthrough=True)


def _cmd_export(args, rest: list[str]) -> int:
    spec = load_pipeline(args.pipeline)
    overrides = parse_overrides(spec, rest)
    results = run_pipeline(spec, overrides, progress=not args.quiet, force=args.force)
    print(f"[{spec.name}] finished in {results['_total'].seconds:.1f} s "
          f"({sum(r.cached for r in results.values())} of {len(results) - 1} stages cached)")
    return 0
