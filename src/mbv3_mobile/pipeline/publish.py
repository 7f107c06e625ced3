"""Publishing: the package stage's folder, built in a temp folder and swapped in atomically, with
`manifest.json` (sha256 and size of every file, model, input spec, preprocessing, labels, figures,
gates, versions) and `labels.txt`. Every shipped file is checked against the sha256 its verify
stage measured: the folder can only hold bytes whose figures it reports."""

from __future__ import annotations

import datetime
import fcntl
import json
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mbv3_mobile.core.atomic import atomic_dir
from mbv3_mobile.core.hashing import sha256_file
from mbv3_mobile.pipeline.contracts import EXAMPLES_FILE, ResolvedModel, ThreadsPick, VerifyFigures
from mbv3_mobile.pipeline.runner import StageContext, StageResult, tool_versions
from mbv3_mobile.pipeline.spec import PipelineError
from mbv3_mobile.tasks import get_task


def environment() -> dict:
    return {"versions": tool_versions(), "platform": platform.platform(), "machine": platform.machine()}


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def file_entry(path: Path, root: Path) -> dict:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return {"path": str(path.relative_to(root)), "kind": "directory",
                "bytes": sum(p.stat().st_size for p in files),
                "files": {str(p.relative_to(path)): sha256_file(p) for p in files}}
    return {"path": str(path.relative_to(root)), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def input_spec(resolved: ResolvedModel, name: str = "image") -> dict:
    r = resolved.resolution
    return {"name": name, "shape": [1, 3, r, r], "dtype": "float32", "layout": "NCHW", "channel_order": "RGB",
            "value": "normalised: (pixel / 255 - mean) / std per channel"}


def gates_of(gates: dict) -> dict:
    """The pipeline's gate tables as data, for the manifest."""
    return {table: [rule.describe() for rule in rules] for table, rules in gates.items()}


def write_manifest(folder: Path, *, fmt: dict, resolved: ResolvedModel, figures: dict, gates: dict,
                   extra: dict | None = None, notes: Callable[[dict], list[str]] | None = None) -> dict:
    """manifest.json over every file in `folder` (sha256 + size), with model, task, preprocessing,
    figures and the gates that judged them. `fmt` is the format's `FormatSpec.describe()`;
    `notes(manifest)` says what an app must match (the model card shows it)."""
    (folder / "labels.txt").write_text("\n".join(resolved.labels) + "\n")
    files = [file_entry(p, folder) for p in sorted(folder.iterdir()) if p.name != "manifest.json"]
    manifest = {
        "format": fmt["id"],
        "export_format": fmt,
        "task": resolved.task,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": {"name": resolved.model_name, **resolved.config, "params": resolved.params, "macs": resolved.macs},
        "source_checkpoint": {"path": resolved.source, "sha256": resolved.source_sha256, "format": resolved.source_format},
        "preprocessing": {**resolved.preprocessing.to_dict(), "rule": resolved.preprocessing_rule},
        "labels": list(resolved.labels),
        "labels_from": resolved.labels_from,
        "files": files,
        "figures": figures,
        "gates": gates_of(gates),
        **(extra or {}),
        **environment(),
    }
    manifest["deployment"] = {"runtime": fmt["verify_runtime"], "notes": notes(manifest) if notes else []}
    write_json(folder / "manifest.json", manifest)
    return manifest


@dataclass
class Publication:
    """What a package stage publishes: the resolved model, its variants' verify results, the
    output folder and the figures table."""

    resolved: ResolvedModel
    variants: list[str]
    final: Path
    verify: dict[str, VerifyFigures]
    table: str
    examples: dict[str, Path] = field(default_factory=dict)  # variant -> its verify stage's EXAMPLES_FILE

    @property
    def name(self) -> str:
        return self.final.name

    @property
    def figures(self) -> dict:
        return {v: r.figures for v, r in self.verify.items()}

    @property
    def verdicts(self) -> dict:
        return {v: r.judged for v, r in self.verify.items()}

    @property
    def pictures(self) -> dict:
        """variant -> which pictures its figures come from (source, count, labelled) and their gate table."""
        return {v: r.pictures_with_table for v, r in self.verify.items()}

    @property
    def pictures_text(self) -> str:
        """One line per distinct picture set: which pictures, and which kind of gate judged them."""
        lines = []
        for desc, variants in _group(self.pictures).items():
            src, count, labelled = desc
            kind = "labelled: accuracy-drop gates" if labelled else "no labels: label-free gates (agreement, SNR)"
            lines.append(f"- {', '.join(variants)}: {count} pictures from {src} ({kind})")
        return "Pictures:\n" + "\n".join(lines)


def publication(ctx: StageContext, variants_param: str, row_label: str) -> Publication:
    """Gather the package stage's inputs; `row_label` is formatted with the variant (`{v}`)."""
    resolved = ctx.resolved
    variants = list(ctx.params[variants_param])
    stages = {v: ctx.upstream("verify", v) for v in variants}
    verify = {v: VerifyFigures.of(stage) for v, stage in stages.items()}
    table = figures_table(resolved, {row_label.format(v=v): r.figures for v, r in verify.items()})
    examples = {v: stage.dir / EXAMPLES_FILE for v, stage in stages.items() if (stage.dir / EXAMPLES_FILE).is_file()}
    return Publication(resolved, variants, Path(ctx.params["out"]) / resolved.output_name(ctx.params), verify, table,
                       examples)


def figures_table(resolved: ResolvedModel, rows: dict[str, dict]) -> str:
    """The task's table of figures (one row per entry, with bounds)."""
    return get_task(resolved.task).module("figures").table(rows)


def _group(pictures: dict) -> dict:
    out: dict = {}
    for v, d in pictures.items():
        out.setdefault((d.get("source"), d.get("count"), d.get("labelled")), []).append(v)
    return out


def ship(measured_by: StageResult, source: Path, dest: Path) -> Path:
    """Copy an artifact (file or folder) into the publish folder, refusing bytes other than the
    ones `measured_by` measured (a verify stage's `measured`) or wrote and checked (its own
    recorded files): a damaged or swapped cache file is never published."""
    expected = measured_by.meta.get("measured")
    if expected is None and source.is_file() and source.parent == measured_by.dir:
        expected = {source.name: measured_by.meta.get("files", {}).get(source.name)}
    if not expected:
        raise PipelineError(f"{measured_by.label} recorded no sha256 of {source.name}; rerun with --force")
    if source.is_dir():
        actual = {str(p.relative_to(source)): sha256_file(p) for p in sorted(source.rglob("*")) if p.is_file()}
    else:
        actual = {source.name: sha256_file(source)}
    if actual != expected:
        raise PipelineError(f"{source} is not what {measured_by.label} measured (sha256 differs): refusing to publish "
                            "it; rerun (the damaged cache entry is rebuilt) or pass --force")
    if source.is_dir():
        shutil.copytree(source, dest)
    else:
        shutil.copy2(source, dest)
    return dest


def publish(ctx: StageContext, pub: Publication, build: Callable[[Path], None],
            after: Callable[[StageContext, Path, Path], None] | None = None) -> dict:
    """Build the folder atomically (nothing appears unless `build` and `after` complete), print the
    figures. `after(ctx, folder, final)` runs once the manifest exists (the model card pins it).
    A lock (in the cache) serialises two runs publishing the same folder."""
    import hashlib

    from mbv3_mobile.pipeline.runner import cache_dir

    # The lock lives in the cache, not beside the published folder (nothing extra in the user's --out).
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"publish-{hashlib.sha256(str(pub.final.resolve()).encode()).hexdigest()[:16]}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with atomic_dir(pub.final) as tmp:
            if pub.examples:  # before `build`, so the manifest lists (and hashes) the picture
                figures_of_task = get_task(pub.resolved.task).module("figures")
                figures_of_task.plot_examples(pub.examples, list(pub.resolved.labels),
                                              tmp / figures_of_task.EXAMPLES_PICTURE, title=pub.resolved.model_name)
            build(tmp)
            if after is not None:
                after(ctx, tmp, pub.final)
    print(f"\n{pub.table}\n\n[{ctx.pipeline.name}] published {pub.final}", flush=True)
    return {"published": str(pub.final), "figures": pub.figures}


def threads_table(picks: dict[str, ThreadsPick]) -> str:
    """README section from the `threads` stages: {file: its pick}."""
    first = next(iter(picks.values()))
    host = first.measured_on
    counts = sorted({n for t in picks.values() for n in t.p50_ms}, key=int)
    lines = [f"Timed at export on {host['cpu']} ({host['usable_cores']} usable cores) in {first.runtime}, median of "
             f"{first.rounds} interleaved rounds; the pick is the fastest count whose gain over fewer threads "
             "beats the noise (fewer threads otherwise: less power, less contention with the app):", "",
             "| file | threads to use | " + " | ".join(f"{n} thread{'s' * (n != '1')}" for n in counts) + " |",
             "|---|---:|" + "---:|" * len(counts)]
    for file, t in picks.items():
        lines.append(f"| `{file}` | {t.recommended} | "
                     + " | ".join(f"{t.p50_ms[n]:.2f} ms" if n in t.p50_ms else "–" for n in counts) + " |")
    return "\n".join(lines)


def threads_note(name: str, t: dict) -> str:
    """Model card line for one file's `threads` pick (manifest `variants.<v>.threads`)."""
    host = t.get("measured_on") or {}
    return (f"{name}: use {t['recommended']} thread(s), the fastest count timed at export on {host.get('cpu', '?')} "
            f"({host.get('usable_cores', '?')} usable cores; " + ", ".join(f"{n}: {ms:.2f} ms" for n, ms in t["p50_ms"].items())
            + "); time it on your phones, the pick differs with the CPU")
