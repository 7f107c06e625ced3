"""Running several format pipelines on one checkpoint: the cross-format commands (parity, the
bench) pick formats from the registry, hand each pipeline its options, check every format's
inputs before any of them exports, run them (cached) and check that every format came from the
same model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mbv3_mobile.export.registry import FormatError, FormatSpec, get_format, list_formats
from mbv3_mobile.pipeline.contracts import ResolvedModel
from mbv3_mobile.pipeline.runner import StageResult, preflight, run_pipeline
from mbv3_mobile.pipeline.spec import PipelineError, PipelineSpec, load_pipeline

# Options a cross-format command hands every format pipeline that declares them.
SHARED = ("checkpoint", "task", "recipe", "images", "labels", "preset", "resize", "interpolation", "mean", "std")


@dataclass
class FormatRun:
    """One format of a cross-format command: its spec, pipeline, options and (once run) results."""

    fmt: FormatSpec
    pipeline: PipelineSpec
    overrides: dict
    results: dict[str, StageResult] | None = None

    @property
    def resolved(self) -> ResolvedModel:
        return ResolvedModel.of(self.results["resolve"])

    @property
    def published(self) -> str | None:
        """The folder the pipeline published (its model card gets the command's figures)."""
        return self.results["package"].meta["published"] if self.results and "package" in self.results else None


def format_overrides(pipeline: PipelineSpec, p: dict, *, out_root: str | None = None) -> dict:
    """A format pipeline's parameters from a cross-format command's (parity, bench): the shared
    checkpoint / recipe / pictures, `<pipeline>_<param>` options, the `<pipeline>_params` table, and
    an output folder under the command's `out`."""
    name = pipeline.name
    overrides = {k: p[k] for k in SHARED if p.get(k) and k in pipeline.params}
    overrides.update({k: p[f"{name}_{k}"] for k in pipeline.params if p.get(f"{name}_{k}")})
    overrides.update(p.get(f"{name}_params", {}))
    if "out" in pipeline.params:
        overrides["out"] = str(Path(out_root or p["out"]) / "artifacts" / name)
    return overrides


def format_pipeline(name: str, *, command: str) -> tuple[FormatSpec, PipelineSpec]:
    """(format spec, pipeline spec) of a format named by pipeline or registry name."""
    try:
        fmt = get_format(name)
    except FormatError:
        known = ", ".join(s.pipeline for s in list_formats())
        raise PipelineError(f"unknown format {name!r} in --formats: {command} knows {known}") from None
    return fmt, load_pipeline(fmt.pipeline)


def plan_formats(names: list[str], p: dict, *, command: str, out_root: str | None = None) -> list[FormatRun]:
    """Every named format's pipeline and options, with every check done before anything exports:
    the formats' own checkpoints agree, and each pipeline's preflight passes (seconds, nothing written)."""
    plan = []
    for name in names:
        fmt, pipeline = format_pipeline(name, command=command)
        plan.append(FormatRun(fmt, pipeline, format_overrides(pipeline, p, out_root=out_root)))
    check_same_checkpoint([(run.pipeline.name, run.overrides.get("checkpoint")) for run in plan])
    for run in plan:
        try:
            preflight(run.pipeline, run.overrides)
        except PipelineError as exc:
            raise PipelineError(f"the {run.pipeline.name} pipeline: {exc}") from None
    return plan


def run_formats(plan: list[FormatRun], *, progress: bool) -> list[FormatRun]:
    """Run (or reuse) each format's pipeline; every one must describe the first one's model."""
    for run in plan:
        try:
            run.results = run_pipeline(run.pipeline, run.overrides, progress=progress)
        except PipelineError as exc:
            raise PipelineError(f"the {run.pipeline.name} pipeline failed (run `nox -s export_{run.pipeline.name}` to "
                                f"see it alone): {exc}") from None
        check_same_model(plan[0], run)
    return plan


def check_same_checkpoint(checkpoints: list[tuple[str, str | None]]) -> None:
    """Before exporting anything: formats given their own checkpoint must agree on labels and
    preprocessing, or the command would compare different models (fails in seconds, not minutes)."""
    from mbv3_mobile.model.checkpoint import load_checkpoint

    if len({path for _, path in checkpoints if path}) < 2:
        return  # one checkpoint (or the recipe) for every format: nothing to compare, nothing to load
    seen: tuple[str, list, dict] | None = None
    for name, path in checkpoints:
        if not path:
            continue
        ck = load_checkpoint(path)
        here = (name, list(ck.labels or []), ck.preprocessing.to_dict() if ck.preprocessing else {})
        if seen is None:
            seen = here
            continue
        for i, what in ((1, "labels"), (2, "preprocessing")):
            if here[i] != seen[i]:
                raise PipelineError(f"the {name} checkpoint ({path}) has other {what} than the {seen[0]} checkpoint: "
                                    f"{here[i]} vs {seen[i]}; every format must get one model, so give "
                                    "every format the same --checkpoint")


def check_same_model(first: FormatRun, run: FormatRun) -> None:
    """Two formats' resolved models must be one model: labels, preprocessing, weights, task."""
    differences = first.resolved.differences(run.resolved)
    if differences:
        raise PipelineError(f"the {run.pipeline.name} artifacts carry another model than the {first.pipeline.name} "
                            f"artifacts ({'; '.join(differences)}): every format must come from one checkpoint at "
                            f"one resolution; drop the {run.pipeline.name} overrides")
