"""The cross-format parity matrix: one checkpoint, every format, the same real pictures.

Each export pipeline is run (its stages are cached, so an already-exported model costs seconds),
then each registered format contributes its `parity_entries(results)`: `Candidate`s that turn the
same normalised pictures into outputs, plus, where the runtime exposes intermediate values, a
per-module output provider for drift localisation. The model's task supplies the reference, the
comparator, the tables and the plot. This module knows formats only through the registry.

Gates and defaults live in `pipelines/04_parity.toml`.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mbv3_mobile.core.atomic import atomic_dir
from mbv3_mobile.crossformat.formats import plan_formats, run_formats
from mbv3_mobile.pipeline.publish import environment, gates_of, write_json
from mbv3_mobile.pipeline.runner import check_params
from mbv3_mobile.pipeline.spec import GateFailure, PipelineSpec, load_pipeline
from mbv3_mobile.tasks import TaskSpec, get_task
from mbv3_mobile.verify import sensitivity
from mbv3_mobile.verify.compare import Candidate
from mbv3_mobile.verify.drift import DriftReport, localize
from mbv3_mobile.verify.gates import FAIL, INCONCLUSIVE, blocking, check_gates, gate_verdict


@dataclass
class ParityResult:
    rows: dict[str, dict]
    failures: list[str]
    inconclusive: list[str] = field(default_factory=list)
    localisation: dict[str, dict] = field(default_factory=dict)

    def blocking(self, inconclusive: str) -> list[str]:
        """The messages that fail the command: every failure, and the inconclusive ones by policy."""
        judged = [{"verdict": FAIL, "message": m} for m in self.failures]
        judged += [{"verdict": INCONCLUSIVE, "message": m} for m in self.inconclusive]
        return [j["message"] for j in blocking(judged, inconclusive)]


def evaluate_entries(entries: list[Candidate], reference, images: torch.Tensor, labels: torch.Tensor | None,
                     spec: PipelineSpec, task: TaskSpec, *, progress: bool = True, num_classes: int = 0) -> ParityResult:
    """`reference`: the eager outputs, or for a task with a streamed comparison the function that
    computes them for a batch (outputs per pixel are never held for every picture)."""
    figures_of_task = task.module("figures")
    rows: dict[str, dict] = {}
    failures: list[str] = []
    inconclusive: list[str] = []
    for entry in entries:
        if entry.skipped:
            rows[entry.name] = {"format": entry.format, "precision": entry.gate, "skipped": entry.skipped}
            continue
        t0 = time.perf_counter()
        if callable(reference):
            figures = figures_of_task.streamed(reference, entry.run, images, labels, num_classes=num_classes)
        else:
            figures = figures_of_task.compare(reference, entry.run(images), labels)
        table = task.gate_table(entry.gate, labels is not None, spec.gates)
        judged = check_gates(figures, spec.gates.get(table, ()))
        verdict = gate_verdict(judged)
        figures.update(format=entry.format, precision=entry.gate, gate_table=table, seconds=round(time.perf_counter() - t0, 2),
                       note=entry.note, gate=verdict, judged=judged)
        failures += [f"{entry.name}: {j['message']}" for j in judged if j["verdict"] == FAIL]
        inconclusive += [f"{entry.name}: {j['message']}" for j in judged if j["verdict"] == INCONCLUSIVE]
        rows[entry.name] = figures
        if progress:
            print(f"[parity] {entry.name:<28} {figures_of_task.summary_line(figures)}  {verdict}", flush=True)
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


def markdown(result: ParityResult, task: TaskSpec, *, title: str, images: int) -> str:
    figures_of_task = task.module("figures")
    lines = [f"# {title}", "", f"{images} real pictures; reference: eager PyTorch fp32"
             f"{figures_of_task.reference_text(result.rows)}. Bounds: one-sided 95 % "
             "(Tango's score bounds for the paired accuracy drop, Wilson for agreement).", "",
             figures_of_task.parity_table(result.rows)]
    if result.failures:
        lines += ["", "## Gate failures", ""] + [f"- {f}" for f in result.failures]
    if result.inconclusive:
        lines += ["", "## Inconclusive gates", ""] + [f"- {f}" for f in result.inconclusive]
    if result.localisation:
        lines += ["", "## Drift localisation", ""]
        for name, loc in result.localisation.items():
            lines += [f"- **{name}**: {loc['summary']}"]
    return "\n".join(lines) + "\n"


def command_line(p: dict, spec: PipelineSpec) -> str:
    """The `nox -s parity` line that reproduces this matrix (options that differ from the defaults)."""
    args = []
    for key in ("checkpoint", "recipe", "formats", "pictures", "images", "eval_data"):
        value = p.get(key)
        if value in (None, "") or value == spec.params.get(key):
            continue
        args += ["--" + key.replace("_", "-"), ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return "nox -s parity" + (" -- " + shlex.join(args) if args else "")


# ---------------------------------------------------------------- the command


def run_parity(params: dict, *, progress: bool = True) -> tuple[ParityResult, Path]:
    spec = load_pipeline("parity")
    p = check_params(spec, params)
    plan = run_formats(plan_formats(p["formats"], p, command="parity"), progress=progress)
    entries: list[Candidate] = []
    for run in plan:
        for entry in run.fmt.hook("parity_entries")(run.results):
            entries.append(entry)
    pipelines = {run.fmt.name: run.pipeline.name for run in plan}
    resolved = plan[0].resolved
    task = get_task(resolved.task)
    model, pre, labels = resolved.load()
    outputs = task.module("outputs")
    pics = outputs.pictures(given=p["eval_data"], images=p["images"], labels=list(labels), pre=pre, purpose="eval",
                            split="test", limit=p["pictures"] or None, what="--eval-data" if p["eval_data"] else "--images")
    images, y = pics.normalized(pre), pics.labels
    if progress:
        print(f"[parity] {len(pics)} pictures from {pics.source} "
              f"({'labelled' if pics.labelled else 'unlabelled: label-free gates'})")
    if hasattr(task.module("figures"), "streamed"):
        reference = lambda batch: outputs.reference(model, batch)  # noqa: E731 - computed a batch at a time
    else:
        reference = outputs.reference(model, images)
    result = evaluate_entries(entries, reference, images, y, spec, task, progress=progress,
                              num_classes=resolved.num_classes)
    for row in result.rows.values():
        row["pipeline"] = pipelines[row["format"]]
    failing = {f.split(":")[0] for f in result.failures}
    if p["localize"] or failing:
        thresholds = spec.settings["localize"]
        reports = localise_entries(entries, model, images[:1], None if p["localize"] else failing, thresholds)
        result.localisation = {n: {"module": r.module, "relative_error": r.relative_error, "summary": r.summary(),
                                   "table": r.table()} for n, r in reports.items()}
    fidelity = layer_report(entries, model, images[: p["sensitivity_pictures"]], progress) if p["sensitivity"] else {}
    name = resolved.output_name(p)
    out = Path(p["out"]) / name
    md = markdown(result, task, title=f"Parity matrix: {name}", images=len(images))
    with atomic_dir(out / "report") as tmp:
        write_json(tmp / "parity.json", {
            "model": resolved.model_name, "task": task.name, "images": len(images), "data": pics.source,
            "pictures": pics.describe(), **task.module("figures").reference_figures(result.rows),
            "params": {k: p[k] for k in ("formats", "pictures", "images", "eval_data")},
            "command": command_line(p, spec), "gates": gates_of(spec.gates),
            "rows": result.rows, "failures": result.failures, "inconclusive": result.inconclusive,
            "localisation": result.localisation, **environment(),
            **({"sensitivity": {"pictures": min(len(images), p["sensitivity_pictures"]),
                                "rows": {n: [vars(f) for f in layers] for n, layers in fidelity.items()}}}
               if fidelity else {})})
        if fidelity:
            md += "\n" + sensitivity.markdown(fidelity, min(len(images), p["sensitivity_pictures"]))
            sensitivity.plot(fidelity, tmp / "sensitivity.png")
        (tmp / "parity.md").write_text(md)
        task.module("figures").parity_plot(result.rows, tmp / "parity.png")
    from mbv3_mobile.card import refresh_cards

    refresh_cards([run.published for run in plan if run.published], parity=out / "report")
    print("\n" + md)
    for n, loc in result.localisation.items():
        print(f"[parity] {n}: {loc['summary']}\n{loc['table']}")
    stops = result.blocking(p["inconclusive"])
    if stops:
        raise GateFailure("parity gates failed:\n  - " + "\n  - ".join(stops) + f"\nreport: {out / 'report'}")
    return result, out / "report"


def load_report(path: str | Path) -> dict:
    return json.loads((Path(path) / "parity.json").read_text())
