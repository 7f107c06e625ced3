"""Pipelines as data: `pipelines/*.toml` at the top of the repository, as DVC keeps `dvc.yaml`;
the wheel ships them as `mbv3_mobile/pipelines/` (pyproject's package-dir mapping), so an installed
`mbv3` works outside a checkout. `MBV3_PIPELINES_DIR` points elsewhere.

A file declares `name`, `title`, `[params]` (defaults; every one with a line in `[help]`), `[gates.<table>]`
(bounds on figures, applied by the runner to what verify stages measured; a task's tables sit under
its name, `[gates.classification.ptq]`) and `[[stages]]`:

    name, run ("module:function"), inputs (earlier stages), params (declared parameters),
    variant_params ({variant: [params]}), foreach (a list parameter: one instance per value),
    deps (parameters naming files/folders: their content joins the key), outs ({name: file}: what
    the stage writes; consumers read `result.out(name)`), publish, cache.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mbv3_mobile.core.errors import UserError
from mbv3_mobile.verify.gates import GateRule

_STAGE_FIELDS = {"name", "run", "inputs", "params", "variant_params", "foreach", "deps", "outs", "publish", "cache"}
_BOUNDS = {"max": "<=", "min": ">="}


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
    deps: tuple[str, ...] = ()
    outs: dict[str, str] = field(default_factory=dict)
    publish: bool = False  # the final stage: writes the user-facing output folder
    cache: bool = True

    def param_names(self, variant: str | None) -> list[str]:
        return list(self.params) + list(self.variant_params.get(variant, ())) if variant else list(self.params)


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    title: str
    params: dict[str, Any]
    help: dict[str, str]
    stages: tuple[StageSpec, ...]
    gates: dict[str, tuple[GateRule, ...]]  # table name (fp32, int8, ...) -> rules
    settings: dict[str, Any]  # other tables of the file (e.g. bench goals), as data
    path: Path

    def stage(self, name: str) -> StageSpec:
        for st in self.stages:
            if st.name == name:
                return st
        raise PipelineError(f"pipeline {self.name!r} has no stage {name!r}")


def pipelines_dir() -> Path:
    """MBV3_PIPELINES_DIR; else the wheel's `mbv3_mobile/pipelines/`; else the checkout's
    top-level `pipelines/` (a source tree or an editable install)."""
    env = os.environ.get("MBV3_PIPELINES_DIR")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parents[1]
    installed = package / "pipelines"
    return installed if installed.is_dir() else package.parents[1] / "pipelines"


def pipeline_files() -> dict[str, Path]:
    """Declared pipeline name -> its file, for every pipeline in `pipelines_dir()`."""
    out = {}
    for path in sorted(pipelines_dir().glob("*.toml")):
        try:
            name = tomllib.loads(path.read_text()).get("name")
        except (OSError, tomllib.TOMLDecodeError):
            continue
        if name:
            out[name] = path
    return out


def find_pipeline(name: str) -> Path:
    """A pipeline by its exact declared name, else by an unambiguous prefix (`and` -> android)."""
    files = pipeline_files()
    if name in files:
        return files[name]
    matches = sorted(n for n in files if n.startswith(name)) if name else []
    if len(matches) == 1:
        return files[matches[0]]
    known = ", ".join(sorted(files)) or "none"
    if matches:
        raise PipelineError(f"pipeline {name!r} is ambiguous: it could be {' or '.join(matches)}; give more letters")
    raise PipelineError(f"no pipeline {name!r} in {pipelines_dir()} (have: {known})")


def load_pipeline(name_or_path: str | os.PathLike) -> PipelineSpec:
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = find_pipeline(str(name_or_path))
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PipelineError(f"cannot read pipeline {path}: {exc}") from None
    if "name" not in data:
        raise PipelineError(f"{path} declares no pipeline (needs name and [params])")
    stages = []
    for raw in data.get("stages", []):
        unknown = set(raw) - _STAGE_FIELDS
        if unknown:
            raise PipelineError(f"{path}: stage {raw.get('name')!r} has unknown fields {sorted(unknown)}")
        stages.append(StageSpec(
            name=raw["name"], run=raw["run"], inputs=tuple(raw.get("inputs", ())), params=tuple(raw.get("params", ())),
            variant_params={k: tuple(v) for k, v in raw.get("variant_params", {}).items()},
            foreach=raw.get("foreach"), deps=tuple(raw.get("deps", ())), outs=dict(raw.get("outs", {})),
            publish=bool(raw.get("publish", False)), cache=bool(raw.get("cache", True)),
        ))
    gates = _gate_tables(path, data.get("gates", {}))
    settings = {k: v for k, v in data.items() if k not in {"name", "title", "params", "help", "stages", "gates"}}
    spec = PipelineSpec(name=data["name"], title=data.get("title", data["name"]), params=dict(data.get("params", {})),
                        help=dict(data.get("help", {})), stages=tuple(stages), gates=gates, settings=settings, path=path)
    _validate(spec)
    return spec


def _is_rule(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _BOUNDS


def _gate_tables(path: Path, raw: Any) -> dict[str, tuple[GateRule, ...]]:
    """`[gates.<table>]` tables of rules, and a task's tables one level down, `[gates.<task>.<table>]`
    (named "<task>.<table>", e.g. "classification.ptq")."""
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: [gates] must be a table of gate tables")
    out: dict[str, tuple[GateRule, ...]] = {}
    for name, table in raw.items():
        if isinstance(table, dict) and table and all(isinstance(v, dict) and not _is_rule(v) for v in table.values()):
            for sub, rules in table.items():  # a task's namespace
                out[f"{name}.{sub}"] = _gate_rules(path, f"{name}.{sub}", rules)
        else:
            out[name] = _gate_rules(path, name, table)
    return out


def _gate_rules(path: Path, table: str, rules: Any) -> tuple[GateRule, ...]:
    if not isinstance(rules, dict):
        raise PipelineError(f"{path}: [gates.{table}] must be a table of figure = {{ max = x }} or {{ min = x }}")
    out = []
    for figure, bound in rules.items():
        if not _is_rule(bound):
            raise PipelineError(f"{path}: gate {table}.{figure} must be {{ max = x }} or {{ min = x }}, got {bound!r}")
        (kind, limit), = bound.items()
        out.append(GateRule(figure, _BOUNDS[kind], float(limit)))
    return tuple(out)


def _validate(spec: PipelineSpec) -> None:
    seen: dict[str, StageSpec] = {}
    for st in spec.stages:
        for dep in st.inputs:
            if dep not in seen:
                raise PipelineError(f"{spec.path}: stage {st.name!r} reads {dep!r}, which is not an earlier stage")
        for p in (*st.params, *st.deps, *(p for ps in st.variant_params.values() for p in ps)):
            if p not in spec.params:
                raise PipelineError(f"{spec.path}: stage {st.name!r} declares unknown parameter {p!r}")
        if st.foreach and not isinstance(spec.params.get(st.foreach), list):
            raise PipelineError(f"{spec.path}: stage {st.name!r} foreach={st.foreach!r} must name a list parameter")
        seen[st.name] = st
    undocumented = [p for p, v in spec.params.items() if p not in spec.help and not isinstance(v, dict)]
    if undocumented:
        raise PipelineError(f"{spec.path}: parameter(s) {', '.join(undocumented)} have no line in [help]")
