"""The cross-format parity matrix: one checkpoint, every format, the same real images.

Each export pipeline is run (its stages are cached, so an already-exported model costs seconds),
then each format's stage module contributes `parity_entries(results, ctx)`: named runners that turn
the same normalised images into logits, plus, where the runtime exposes intermediate values, a
per-module output provider for drift localisation. This module stays format-neutral.

Gates and defaults live in `pipelines/04_parity.toml`.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_dir
from .drift import DriftReport, localize
from .pipeline import GateFailure, PipelineError, load_pipeline, run_pipeline
from .stages import common


@dataclass
class FormatEntry:
    """One row of the matrix."""

    name: str  # e.g. "pte int8 (ptq)"
    precision: str  # "fp32", "fp16", "int8" or "compressed": picks the gate
    run: Callable[[torch.Tensor], torch.Tensor]  # normalised (N,3,R,R) -> logits (N,C)
    module_outputs: Callable[[torch.Tensor], dict[str, np.ndarray]] | None = None  # one image -> {module: output}
    note: str = ""
    skipped: str | None = None  # reason this format could not run here


@dataclass
class ParityResult:
    rows: dict[str, dict]
    failures: list[str]
    localisation: dict[str, dict] = field(default_factory=dict)


def gate_rules(precision: str, gates: dict[str, float]) -> list[tuple[str, str, float]]:
    """(figure, op, limit) per precision, from the [gates] table."""
    if precision == "fp32":
        return [("max_abs_logit_diff", "<=", gates["fp32_max_abs_logit"]),
                ("top1_agreement", ">=", gates["fp32_top1_agreement"])]
    key = {"int8": "int8_max_drop_pts", "fp16": "fp16_max_drop_pts", "compressed": "compressed_max_drop_pts"}[precision]
    return [("top1_drop_pts", "<=", gates[key])] if key in gates else []


def evaluate_entries(entries: list[FormatEntry], reference: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                     gates: dict[str, float], *, progress: bool = True) -> ParityResult:
    rows: dict[str, dict] = {}
    failures: list[str] = []
    for entry in entries:
        if entry.skipped:
            rows[entry.name] = {"precision": entry.precision, "skipped": entry.skipped}
            continue
        t0 = time.perf_counter()
        logits = entry.run(images)
        figures = common.compare_logits(reference, logits, labels)
        figures.update(precision=entry.precision, seconds=round(time.perf_counter() - t0, 2), note=entry.note)
        failed = [f"{entry.name}: {k} = {figures[k]:.4g} must be {op} {lim:g}"
                  for k, op, lim in gate_rules(entry.precision, gates)
                  if not (figures[k] <= lim if op == "<=" else figures[k] >= lim)]
        figures["gate"] = "fail" if failed else "pass"
        failures += failed
        rows[entry.name] = figures
        if progress:
            print(f"[parity] {entry.name:<28} top-1 {100 * figures['top1']:.2f} %  agreement {100 * figures['top1_agreement']:.2f} %"
                  f"  max|dlogit| {figures['max_abs_logit_diff']:.2e}  {figures['gate']}", flush=True)
    return ParityResult(rows, failures)


def localise_entries(entries: list[FormatEntry], model: torch.nn.Module, image: torch.Tensor,
                     names: set[str] | None, thresholds: dict[str, float]) -> dict[str, DriftReport]:
    reports = {}
    for entry in entries:
        if entry.skipped or entry.module_outputs is None or (names is not None and entry.name not in names):
            continue
        reports[entry.name] = localize(model, image, entry.module_outputs(image), thresholds[entry.precision])
    return reports


def markdown(result: ParityResult, *, title: str, images: int, reference_top1: float) -> str:
    lines = [f"# {title}", "", f"{images} real images; reference: eager PyTorch fp32 (top-1 {100 * reference_top1:.2f} %).", "",
             "| format | precision | top-1 % | drop (pt) | top-1 agreement % | max abs dlogit | mean abs dlogit | min cosine | gate |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in result.rows.items():
        if "skipped" in r:
            lines.append(f"| {name} | {r['precision']} | – | – | – | – | – | – | skipped: {r['skipped']} |")
            continue
        lines.append(f"| {name} | {r['precision']} | {100 * r['top1']:.2f} | {r['top1_drop_pts']:.2f} | {100 * r['top1_agreement']:.2f} | "
                     f"{r['max_abs_logit_diff']:.2e} | {r['mean_abs_logit_diff']:.2e} | {r['min_cosine']:.6f} | {r['gate']} |")
    if result.failures:
        lines += ["", "## Gate failures", ""] + [f"- {f}" for f in result.failures]
    if result.localisation:
        lines += ["", "## Drift localisation", ""]
        for name, loc in result.localisation.items():
            lines += [f"- **{name}**: {loc['summary']}"]
    return "\n".join(lines) + "\n"


def plot(result: ParityResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {k: v for k, v in result.rows.items() if "skipped" not in v}
    names = list(rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 0.45 * len(names) + 1.8))
    colors = ["tab:red" if rows[n]["gate"] == "fail" else "tab:blue" for n in names]
    ax1.barh(names, [max(rows[n]["max_abs_logit_diff"], 1e-9) for n in names], color=colors)
    ax1.set_xscale("log")
    ax1.set_xlabel("max |Δlogit| vs eager fp32 (log)")
    ax1.invert_yaxis()
    ax2.barh(names, [100 * rows[n]["top1"] for n in names], color=colors)
    ax2.axvline(100 * next(iter(rows.values()))["reference_top1"], color="k", ls="--", lw=1, label="eager fp32")
    ax2.set_xlabel("top-1 accuracy (%)")
    lo = min(100 * rows[n]["top1"] for n in names)
    ax2.set_xlim(max(0, lo - 2), 100)
    ax2.legend(loc="lower right")
    ax2.invert_yaxis()
    ax2.set_yticklabels([])
    fig.suptitle("parity with eager PyTorch fp32 on the same real images (red: gate failed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- the command


def run_parity(params: dict, *, progress: bool = True) -> tuple[ParityResult, Path]:
    spec = load_pipeline("parity")
    p = {**spec.params, **{k: v for k, v in params.items() if v is not None}}
    gates = {**spec.gates, **p.get("gates", {})}
    plan = []
    for fmt in p["formats"]:
        pipeline, module = format_pipeline(fmt)
        plan.append((fmt, pipeline, module, format_overrides(fmt, pipeline, p)))
    check_same_checkpoint([(fmt, o.get("checkpoint")) for fmt, _, _, o in plan])
    entries: list[FormatEntry] = []
    published: list[str] = []  # the artifact folders compared: their model cards get the matrix
    resolved_meta = first = None
    for fmt, pipeline, module, overrides in plan:
        results = run_format(fmt, pipeline, overrides, progress=progress)
        if resolved_meta is None:
            resolved_meta, first = results["resolve"].meta, fmt
        check_same_model(first, resolved_meta, fmt, results["resolve"].meta)
        entries += module.parity_entries(results)
        if "package" in results:
            published.append(results["package"].meta["published"])
    resolve_result = results["resolve"]
    model, pre, labels = common.load_resolved(resolve_result)
    images, y = common.eval_images(p["data"], pre, labels, split="test", limit=p["images"] or None)
    reference = common.eager_logits(model, images)
    result = evaluate_entries(entries, reference, images, y, gates, progress=progress)
    failing = {f.split(":")[0] for f in result.failures}
    if p["localize"] or failing:
        thresholds = {k: gates[f"localize_{k}"] for k in ("fp32", "fp16", "int8", "compressed")}
        reports = localise_entries(entries, model, images[:1], None if p["localize"] else failing, thresholds)
        result.localisation = {n: {"module": r.module, "relative_error": r.relative_error, "summary": r.summary(),
                                   "table": r.table()} for n, r in reports.items()}
    name = common.output_name(_Ctx(p), resolved_meta)
    out = Path(p["out"]) / name
    ref_top1 = (reference.argmax(1) == y).double().mean().item()
    md = markdown(result, title=f"Parity matrix: {name}", images=len(y), reference_top1=ref_top1)
    with atomic_dir(out / "report") as tmp:
        common.write_json(tmp / "parity.json", {"model": resolved_meta["model_name"], "images": len(y), "data": p["data"],
                                                "reference_top1": ref_top1, "gates": gates, "rows": result.rows,
                                                "failures": result.failures, "localisation": result.localisation,
                                                **common.environment()})
        (tmp / "parity.md").write_text(md)
        plot(result, tmp / "parity.png")
    from .model_card import refresh_cards

    refresh_cards(published, parity=out / "report")
    print("\n" + md)
    for n, loc in result.localisation.items():
        print(f"[parity] {n}: {loc['summary']}\n{loc['table']}")
    if result.failures:
        raise GateFailure("parity gates failed:\n  - " + "\n  - ".join(result.failures) + f"\nreport: {out / 'report'}")
    return result, out / "report"


def format_overrides(fmt: str, pipeline, p: dict) -> dict:
    """A format pipeline's parameters from a cross-format command's (parity, bench): the shared
    checkpoint / recipe, `<fmt>_<param>` options, the `<fmt>_params` table, and an output folder
    under the command's `out`."""
    overrides = {k: p[k] for k in ("checkpoint", "recipe") if p.get(k) and k in pipeline.params}
    overrides.update({k: p[f"{fmt}_{k}"] for k in pipeline.params if p.get(f"{fmt}_{k}")})
    overrides.update(p.get(f"{fmt}_params", {}))
    if "out" in pipeline.params:
        overrides["out"] = str(Path(p["out"]) / "artifacts" / fmt)
    return overrides


def run_format(fmt: str, pipeline, overrides: dict, *, progress: bool) -> dict:
    try:
        return run_pipeline(pipeline, overrides, progress=progress)
    except PipelineError as exc:
        raise PipelineError(f"the {fmt} pipeline failed (run `nox -s export_{fmt}` to see it alone): {exc}") from None


def parity_formats() -> list[str]:
    """Pipelines whose stages module contributes rows (`parity_entries`): the formats parity knows."""
    from .pipeline import pipelines_dir

    names = []
    for path in sorted(pipelines_dir().glob("*.toml")):
        name = load_pipeline(path).name
        try:
            module = importlib.import_module(f"mbv3_mobile.stages.{name}")
        except ModuleNotFoundError:
            continue
        if hasattr(module, "parity_entries"):
            names.append(name)
    return names


def format_pipeline(fmt: str):
    """(pipeline spec, stages module) of a format, or a PipelineError listing the known formats."""
    known = parity_formats()
    if fmt not in known:
        raise PipelineError(f"unknown format {fmt!r} in formats: parity knows {', '.join(known)} "
                            "(each is a pipeline in pipelines/ with a stages module that has parity_entries)")
    pipeline = load_pipeline(fmt)
    return pipeline, importlib.import_module(f"mbv3_mobile.stages.{pipeline.name}")


def check_same_checkpoint(checkpoints: list[tuple[str, str | None]]) -> None:
    """Before exporting anything: formats given their own checkpoint must agree on labels and
    preprocessing, or the matrix would compare different models (fails in seconds, not minutes)."""
    from .checkpoint import load_checkpoint

    if len({path for _, path in checkpoints if path}) < 2:
        return  # one checkpoint (or the recipe) for every format: nothing to compare, nothing to load
    seen: tuple[str, list, dict] | None = None
    for fmt, path in checkpoints:
        if not path:
            continue
        ck = load_checkpoint(path)
        here = (fmt, list(ck.labels or []), ck.preprocessing.to_dict() if ck.preprocessing else {})
        if seen is None:
            seen = here
            continue
        for i, what in ((1, "labels"), (2, "preprocessing")):
            if here[i] != seen[i]:
                raise PipelineError(f"the {fmt} checkpoint ({path}) has other {what} than the {seen[0]} checkpoint: "
                                    f"{here[i]} vs {seen[i]}; parity compares one model in every format, so give "
                                    "every format the same --checkpoint")


def check_same_model(first: str, first_meta: dict, fmt: str, meta: dict) -> None:
    """Two formats' resolve metadata must describe one model: labels, preprocessing, weights."""
    for key, what in (("labels", "labels"), ("preprocessing", "preprocessing (resolution, mean, std)"),
                      ("source_sha256", "weights")):
        # JSON form on both sides: a cached stage's meta has lists where a fresh one has tuples.
        if json.loads(json.dumps(meta[key])) != json.loads(json.dumps(first_meta[key])):
            raise PipelineError(f"the {fmt} artifacts carry other {what} than the {first} artifacts "
                                f"({meta[key]} vs {first_meta[key]}): every format must come "
                                f"from one checkpoint at one resolution; drop the {fmt} overrides")


class _Ctx:
    def __init__(self, params: dict) -> None:
        self.params = params


def register_cli(sub) -> None:
    p = sub.add_parser("parity", help="every format vs eager PyTorch on the same real images, gated", add_help=False)
    p.set_defaults(func=_cmd_parity, passthrough=True)


def _cmd_parity(args, rest: list[str]) -> int:
    from .pipeline import parse_overrides

    spec = load_pipeline("parity")
    overrides = parse_overrides(spec, rest)
    run_parity(overrides, progress=True)
    return 0


def load_report(path: str | Path) -> dict:
    return json.loads((Path(path) / "parity.json").read_text())
