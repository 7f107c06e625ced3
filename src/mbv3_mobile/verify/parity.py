"""The cross-format parity matrix: one checkpoint, every format, the same real pictures.

Each export pipeline is run (its stages are cached, so an already-exported model costs seconds),
then each registered format contributes its `parity_entries(results)`: `Candidate`s that turn the
same normalised pictures into logits, plus, where the runtime exposes intermediate values, a
per-module output provider for drift localisation. This module stays format-neutral: it knows
formats only through `mbv3_mobile.export.registry`.

Gates and defaults live in `pipelines/04_parity.toml`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mbv3_mobile.core.atomic import atomic_dir
from mbv3_mobile.data.selection import choose, pictures
from mbv3_mobile.export.registry import FormatError, get_format, list_formats
from mbv3_mobile.pipeline.publish import environment, output_name, write_json
from mbv3_mobile.pipeline.runner import check_params, preflight, run_pipeline
from mbv3_mobile.pipeline.spec import GateFailure, PipelineError, PipelineSpec, load_pipeline
from mbv3_mobile.pipeline.stages import eager_logits, load_resolved
from mbv3_mobile.verify import sensitivity
from mbv3_mobile.verify.compare import Candidate, compare_logits
from mbv3_mobile.verify.drift import DriftReport, localize
from mbv3_mobile.verify.gates import FAIL, INCONCLUSIVE, _fmt, check_gates, gate_verdict, with_bounds


@dataclass
class ParityResult:
    rows: dict[str, dict]
    failures: list[str]
    inconclusive: list[str] = field(default_factory=list)
    localisation: dict[str, dict] = field(default_factory=dict)


def evaluate_entries(entries: list[Candidate], reference: torch.Tensor, images: torch.Tensor, labels: torch.Tensor | None,
                     spec: PipelineSpec, *, progress: bool = True) -> ParityResult:
    rows: dict[str, dict] = {}
    failures: list[str] = []
    inconclusive: list[str] = []
    for entry in entries:
        if entry.skipped:
            rows[entry.name] = {"format": entry.format, "precision": entry.gate, "skipped": entry.skipped}
            continue
        t0 = time.perf_counter()
        figures = compare_logits(reference, entry.run(images), labels)
        table = f"{entry.gate}_unlabelled" if labels is None and f"{entry.gate}_unlabelled" in spec.gates else entry.gate
        judged = check_gates(figures, spec.gates.get(table, ()))
        verdict = gate_verdict(judged)
        figures.update(format=entry.format, precision=entry.gate, gate_table=table, seconds=round(time.perf_counter() - t0, 2),
                       note=entry.note, gate=verdict, judged=judged)
        failures += [f"{entry.name}: {j['message']}" for j in judged if j["verdict"] == FAIL]
        inconclusive += [f"{entry.name}: {j['message']}" for j in judged if j["verdict"] == INCONCLUSIVE]
        rows[entry.name] = figures
        if progress:
            top1 = f"top-1 {_fmt('top1', figures['top1'])}  " if "top1" in figures else ""
            print(f"[parity] {entry.name:<28} {top1}agreement {_fmt('top1_agreement', figures['top1_agreement'])}"
                  f"  max|dlogit| {figures['max_abs_dlogit']:.2e}  {verdict}", flush=True)
    return ParityResult(rows, failures, inconclusive)


def localise_entries(entries: list[Candidate], model: torch.nn.Module, image: torch.Tensor,
                     names: set[str] | None, thresholds: dict[str, float]) -> dict[str, DriftReport]:
    reports = {}
    for entry in entries:
        if entry.skipped or entry.module_outputs is None or (names is not None and entry.name not in names):
            continue
        reports[entry.name] = localize(model, image, entry.module_outputs(image), thresholds[entry.gate])
    return reports


def layer_report(entries: list[Candidate], model: torch.nn.Module, images: torch.Tensor,
                 progress: bool) -> dict[str, list[sensitivity.LayerFidelity]]:
    """Per-module fidelity of every reduced-precision row that exposes per-module outputs."""
    report = {}
    for entry in entries:
        if entry.skipped or entry.gate == "fp32" or entry.module_outputs is None:
            continue
        if progress:
            print(f"[parity] sensitivity: {entry.name} on {len(images)} pictures", flush=True)
        report[entry.name] = sensitivity.layer_fidelity(model, entry, images)
    return report


def markdown(result: ParityResult, *, title: str, images: int, reference_top1: float | None) -> str:
    ref = f" (top-1 {100 * reference_top1:.2f} %)" if reference_top1 is not None else ""
    lines = [f"# {title}", "", f"{images} real pictures; reference: eager PyTorch fp32{ref}. Bounds: one-sided 95 % "
             "(Tango's score bounds for the paired accuracy drop, Wilson for agreement).", "",
             "| format | gate table | top-1 | drop [bounds] | top-1 agreement [bounds] | SNR | max abs dlogit | min cosine | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in result.rows.items():
        if "skipped" in r:
            lines.append(f"| {name} | {r['precision']} | – | – | – | – | – | – | skipped: {r['skipped']} |")
            continue
        lines.append(f"| {name} | {r['precision']} | {_fmt('top1', r.get('top1'))} | {with_bounds(r, 'top1_drop')} | "
                     f"{with_bounds(r, 'top1_agreement')} | {_fmt('snr_db', r['snr_db'])} | {r['max_abs_dlogit']:.2e} | "
                     f"{r['min_cosine']:.6f} | {r['gate']} |")
    if result.failures:
        lines += ["", "## Gate failures", ""] + [f"- {f}" for f in result.failures]
    if result.inconclusive:
        lines += ["", "## Inconclusive gates", ""] + [f"- {f}" for f in result.inconclusive]
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
    colors = [{"fail": "tab:red", "inconclusive": "tab:orange"}.get(rows[n]["gate"], "tab:blue") for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 0.45 * len(names) + 1.8))
    ax1.barh(names, [max(rows[n]["max_abs_dlogit"], 1e-9) for n in names], color=colors)
    ax1.set_xscale("log")
    ax1.set_xlabel("max |Δlogit| vs eager fp32 (log)")
    ax1.invert_yaxis()
    labelled = all("top1" in rows[n] for n in names)
    key, label = ("top1", "top-1 accuracy (%)") if labelled else ("top1_agreement", "top-1 agreement with eager (%)")
    values = [100 * rows[n][key] for n in names]
    bound_key = "top1_drop" if labelled else "top1_agreement"
    err = []
    for n in names:
        lo, hi = rows[n]["bounds"][bound_key]
        if labelled:  # drop bounds -> accuracy bounds
            ref = rows[n]["reference_top1"]
            err.append((100 * (rows[n]["top1"] - (ref - hi)), 100 * ((ref - lo) - rows[n]["top1"])))
        else:
            err.append((100 * (rows[n][key] - lo), 100 * (hi - rows[n][key])))
    ax2.barh(names, values, color=colors, xerr=list(zip(*err)) if err else None, capsize=3)
    if labelled:
        ax2.axvline(100 * next(iter(rows.values()))["reference_top1"], color="k", ls="--", lw=1, label="eager fp32")
        ax2.legend(loc="lower right")
    ax2.set_xlabel(label + ", 95 % one-sided bounds")
    lo = min(values) if values else 0
    ax2.set_xlim(max(0, lo - 3), 100.5)
    ax2.invert_yaxis()
    ax2.set_yticklabels([])
    fig.suptitle("parity with eager PyTorch fp32 on the same real pictures (red: failed, orange: inconclusive)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- the command


def run_parity(params: dict, *, progress: bool = True) -> tuple[ParityResult, Path]:
    spec = load_pipeline("parity")
    p = check_params(spec, params)
    plan = []
    for name in p["formats"]:
        fmt, pipeline = format_pipeline(name)
        plan.append((fmt, pipeline, format_overrides(pipeline, p)))
    check_same_checkpoint([(pipeline.name, o.get("checkpoint")) for _, pipeline, o in plan])
    entries: list[Candidate] = []
    published: list[str] = []  # the artifact folders compared: their model cards get the matrix
    resolved_meta = first = results = None
    for _, pipeline, overrides in plan:  # every format's checks first: bad input fails before any export
        try:
            preflight(pipeline, overrides)
        except PipelineError as exc:
            raise PipelineError(f"the {pipeline.name} pipeline: {exc}") from None
    for fmt, pipeline, overrides in plan:
        results = run_format(pipeline, overrides, progress=progress)
        if resolved_meta is None:
            resolved_meta, first = results["resolve"].meta, pipeline.name
        check_same_model(first, resolved_meta, pipeline.name, results["resolve"].meta)
        entries += fmt.hook("parity_entries")(results)
        if "package" in results:
            published.append(results["package"].meta["published"])
    model, pre, labels = load_resolved(results["resolve"])
    source, labelled = choose(given=p["eval_data"], images=p["images"], labels=labels, purpose="eval")
    pics = pictures(source, labelled, pre, labels, split="test", limit=p["pictures"] or None)
    images, y = pics.normalized(pre), pics.labels
    if progress:
        print(f"[parity] {len(pics)} pictures from {pics.source} ({'labelled' if labelled else 'unlabelled: label-free gates'})")
    reference = eager_logits(model, images)
    result = evaluate_entries(entries, reference, images, y, spec, progress=progress)
    failing = {f.split(":")[0] for f in result.failures}
    if p["localize"] or failing:
        thresholds = spec.settings["localize"]
        reports = localise_entries(entries, model, images[:1], None if p["localize"] else failing, thresholds)
        result.localisation = {n: {"module": r.module, "relative_error": r.relative_error, "summary": r.summary(),
                                   "table": r.table()} for n, r in reports.items()}
    fidelity = layer_report(entries, model, images[: p["sensitivity_pictures"]], progress) if p["sensitivity"] else {}
    name = output_name(p, resolved_meta)
    out = Path(p["out"]) / name
    ref_top1 = (reference.argmax(1) == y).double().mean().item() if y is not None else None
    md = markdown(result, title=f"Parity matrix: {name}", images=len(images), reference_top1=ref_top1)
    with atomic_dir(out / "report") as tmp:
        write_json(tmp / "parity.json", {
            "model": resolved_meta["model_name"], "images": len(images), "data": pics.source,
            "pictures": pics.describe(), "reference_top1": ref_top1,
            "params": {k: p[k] for k in ("formats", "pictures", "images", "eval_data")},
            "gates": {t: [r.describe() for r in rules] for t, rules in spec.gates.items()},
            "rows": result.rows, "failures": result.failures, "inconclusive": result.inconclusive,
            "localisation": result.localisation, **environment(),
            **({"sensitivity": {"pictures": min(len(images), p["sensitivity_pictures"]),
                                "rows": {n: [vars(f) for f in layers] for n, layers in fidelity.items()}}}
               if fidelity else {})})
        if fidelity:
            md += "\n" + sensitivity.markdown(fidelity, min(len(images), p["sensitivity_pictures"]))
            sensitivity.plot(fidelity, tmp / "sensitivity.png")
        (tmp / "parity.md").write_text(md)
        plot(result, tmp / "parity.png")
    from mbv3_mobile.report.card import refresh_cards

    refresh_cards(published, parity=out / "report")
    print("\n" + md)
    for n, loc in result.localisation.items():
        print(f"[parity] {n}: {loc['summary']}\n{loc['table']}")
    blocking = result.failures + (result.inconclusive if p["inconclusive"] == "fail" else [])
    if blocking:
        raise GateFailure("parity gates failed:\n  - " + "\n  - ".join(blocking) + f"\nreport: {out / 'report'}")
    return result, out / "report"


def format_overrides(pipeline: PipelineSpec, p: dict, *, out_root: str | None = None) -> dict:
    """A format pipeline's parameters from a cross-format command's (parity, bench): the shared
    checkpoint / recipe, `<pipeline>_<param>` options, the `<pipeline>_params` table, and an
    output folder under the command's `out`."""
    fmt = pipeline.name
    shared = ("checkpoint", "recipe", "images", "labels", "preset", "resize", "interpolation", "mean", "std")
    overrides = {k: p[k] for k in shared if p.get(k) and k in pipeline.params}
    overrides.update({k: p[f"{fmt}_{k}"] for k in pipeline.params if p.get(f"{fmt}_{k}")})
    overrides.update(p.get(f"{fmt}_params", {}))
    if "out" in pipeline.params:
        overrides["out"] = str(Path(out_root or p["out"]) / "artifacts" / fmt)
    return overrides


def run_format(pipeline: PipelineSpec, overrides: dict, *, progress: bool) -> dict:
    try:
        return run_pipeline(pipeline, overrides, progress=progress)
    except PipelineError as exc:
        raise PipelineError(f"the {pipeline.name} pipeline failed (run `nox -s export_{pipeline.name}` to see it alone): "
                            f"{exc}") from None


def format_pipeline(name: str):
    """(format spec, pipeline spec) of a format named by pipeline or registry name."""
    try:
        fmt = get_format(name)
    except FormatError:
        known = ", ".join(s.pipeline for s in list_formats())
        raise PipelineError(f"unknown format {name!r} in formats: parity knows {known}") from None
    return fmt, load_pipeline(fmt.pipeline)


def check_same_checkpoint(checkpoints: list[tuple[str, str | None]]) -> None:
    """Before exporting anything: formats given their own checkpoint must agree on labels and
    preprocessing, or the matrix would compare different models (fails in seconds, not minutes)."""
    from mbv3_mobile.model.checkpoint import load_checkpoint

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


def load_report(path: str | Path) -> dict:
    return json.loads((Path(path) / "parity.json").read_text())
