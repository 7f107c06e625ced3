"""Stages and helpers every export pipeline shares."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..data import BatchTransform, ImageFolderDataset, balanced_subset, load_fashion_mnist
from ..pipeline import PipelineError, StageContext, sha256_file, tool_versions
from ..preprocess import Preprocessing
from ..profile import profile_model

MODEL_FILE = "model.safetensors"


# ---------------------------------------------------------------- resolve


def resolve_checkpoint_fingerprint(ctx: StageContext) -> str:
    ckpt = ctx.params.get("checkpoint")
    if ckpt:
        path = Path(ckpt)
        if not path.is_file():
            raise PipelineError(f"--checkpoint {path} does not exist; pass a .safetensors/.pth file or omit it "
                                "to use the embedded Fashion-MNIST default")
        return "file:" + sha256_file(path)
    from ..zoo import RECIPES, recipe_key

    recipe = ctx.params.get("recipe", "default")
    if recipe not in RECIPES:
        raise PipelineError(f"unknown recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
    return f"recipe:{recipe}:{recipe_key(RECIPES[recipe])}"


def resolve_checkpoint(ctx: StageContext) -> dict:
    """The user's checkpoint, or the embedded default (trained on first use), normalised to our format."""
    p = ctx.params
    if p.get("checkpoint"):
        source = Path(p["checkpoint"])
    else:
        from ..zoo import ensure_model

        source = ensure_model(p.get("recipe", "default"), progress=ctx.progress)
    try:
        ck = load_checkpoint(source, arch=p.get("arch") or None, width=p.get("width") or None)
    except CheckpointError as exc:
        raise PipelineError(f"checkpoint does not match the request: {exc}") from None
    pre = ck.preprocessing or Preprocessing(resolution=p.get("resolution") or 224)
    if p.get("resolution") and p["resolution"] != pre.resolution:
        ctx.log(f"warning: exporting at {p['resolution']} px, the model was trained at {pre.resolution} px")
        pre = replace(pre, resolution=int(p["resolution"]))
    labels = ck.labels or [f"class_{i}" for i in range(ck.config.num_classes)]
    save_checkpoint(ctx.out_dir / MODEL_FILE, ck.model, preprocessing=pre, labels=labels, extra=ck.extra)
    prof = profile_model(ck.model, pre.resolution)
    ctx.log(f"{ck.config.name} ({ck.source}) at {pre.resolution} px, {prof.params:,} params, {prof.macs / 1e6:.1f} M MACs")
    return {
        "source": str(source), "source_format": ck.source, "source_sha256": sha256_file(source),
        "config": ck.config.to_dict(), "model_name": ck.config.name, "preprocessing": pre.to_dict(), "labels": labels,
        "params": prof.params, "macs": prof.macs, "train_summary": {k: ck.extra.get(k) for k in ("val_top1", "epochs")},
    }


def load_resolved(result) -> tuple[torch.nn.Module, Preprocessing, list[str]]:
    ck = load_checkpoint(result.file(MODEL_FILE))
    return ck.model.eval(), ck.preprocessing, ck.labels


# ---------------------------------------------------------------- real images


def eval_images(spec: str, preprocessing: Preprocessing, labels: list[str], *, split: str = "test",
                limit: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images (N, 3, R, R) and labels from Fashion-MNIST or an ImageFolder tree.

    `limit` takes a class-balanced subset. The label names must match the model's, or the accuracy
    figures would compare different classes.
    """
    if spec in ("fashion-mnist", "fashion_mnist", "fmnist"):
        ds = load_fashion_mnist(split)
    else:
        ds = ImageFolderDataset(spec, preprocessing.resolution).to_arrays()
    if list(ds.classes) != list(labels):
        raise PipelineError(
            f"the data's classes {list(ds.classes)[:5]}... do not match the model's labels {list(labels)[:5]}...; "
            "pass --eval-data / --calib-data with an ImageFolder of the model's classes"
        )
    ds = _limited(ds, limit, seed)
    transform = BatchTransform(preprocessing)
    x = torch.cat([transform(ds.images[i : i + 1024]) for i in range(0, len(ds), 1024)])
    return x, ds.labels.clone()


def uint8_images(spec: str, labels: list[str], *, split: str = "test", limit: int | None = None, seed: int = 0):
    """The same selection as `eval_images`, as stored uint8 images (for formats that take pictures)."""
    ds = load_fashion_mnist(split) if spec in ("fashion-mnist", "fashion_mnist", "fmnist") else None
    if ds is None:
        raise PipelineError("uint8 image export is implemented for Fashion-MNIST only")
    ds = _limited(ds, limit, seed)
    return ds.images, ds.labels


def _limited(ds, limit: int | None, seed: int):
    """Exactly `limit` images, spread evenly over the classes (seeded), in dataset order."""
    if limit is None or limit >= len(ds):
        return ds
    per_class = -(-limit // len(ds.classes))
    pool = balanced_subset(ds, per_class, seed=seed)
    keep = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:limit]
    return pool.subset(keep.sort().values)


# ---------------------------------------------------------------- figures


def compare_logits(reference: torch.Tensor, candidate: torch.Tensor, labels: torch.Tensor) -> dict:
    """Parity and accuracy of `candidate` logits against `reference` logits on the same images."""
    ref, cand = reference.double(), candidate.double()
    diff = (cand - ref).abs()
    cos = torch.nn.functional.cosine_similarity(cand, ref, dim=1)
    ref_correct = int((ref.argmax(1) == labels).sum())
    cand_correct = int((cand.argmax(1) == labels).sum())
    ref_top1, cand_top1 = ref_correct / len(labels), cand_correct / len(labels)
    return {
        "images": int(len(labels)),
        "max_abs_logit_diff": diff.max().item(),
        "mean_abs_logit_diff": diff.mean().item(),
        "min_cosine": cos.min().item(),
        "top1_agreement": (cand.argmax(1) == ref.argmax(1)).double().mean().item(),
        "reference_top1": ref_top1,
        "top1": cand_top1,
        # counts, not float ratios: one image of 1000 is exactly 0.1 pt, not 0.10000000000000009
        "top1_drop_pts": round(100.0 * (ref_correct - cand_correct) / len(labels), 9),
    }


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


# ---------------------------------------------------------------- gates and publishing

FP32_RULES = [("max_abs_logit_diff", "<=", "fp32_max_abs_logit"), ("top1_agreement", ">=", "fp32_top1_agreement")]


def drop_rules(gate: str) -> list[tuple[str, str, str]]:
    return [("top1_drop_pts", "<=", gate)]


@torch.no_grad()
def eager_logits(model: torch.nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([model.eval()(images[i : i + batch]) for i in range(0, len(images), batch)])


def verify_against_eager(ctx: StageContext, what: str, run, *, limit: int | None, rules) -> dict:
    """The verify stages' common shape: real test images -> eager fp32 reference and the format's
    logits (`run(images, preprocessing)`) -> figures -> gates (raise, nothing published)."""
    model, pre, labels = load_resolved(ctx.inputs["resolve"])
    x, y = eval_images(ctx.params["eval_data"], pre, labels, split="test", limit=limit)
    reference = eager_logits(model, x)
    ctx.log(f"{what}: {len(x)} real test images")
    figures = compare_logits(reference, run(x, pre), y)
    raise_if_failed(ctx, what, check_gates(ctx, figures, rules), figures)
    return figures


def check_gates(ctx: StageContext, figures: dict, rules: list[tuple[str, str, str]]) -> list[str]:
    """rules: (figure key, '<=' or '>=', gate name in the pipeline's [gates]). Returns failures."""
    failures = []
    for key, op, gate in rules:
        if gate not in ctx.gates:
            continue
        limit, value = ctx.gates[gate], figures[key]
        ok = value <= limit if op == "<=" else value >= limit
        if not ok:
            failures.append(f"{key} = {value:.6g} (gate {gate}: must be {op} {limit:g})")
    return failures


def raise_if_failed(ctx: StageContext, what: str, failures: list[str], figures: dict) -> None:
    from ..pipeline import GateFailure

    if failures:
        table = "\n".join(f"  {k:<22} {v:.6g}" if isinstance(v, float) else f"  {k:<22} {v}" for k, v in figures.items())
        raise GateFailure(f"{what}: gate failed, nothing published:\n  - " + "\n  - ".join(failures) + f"\nfigures:\n{table}")


def output_name(ctx: StageContext, resolved: dict) -> str:
    return ctx.params.get("name") or f"{resolved['model_name']}_{resolved['preprocessing']['resolution']}px"


def input_spec(resolved: dict, name: str = "image") -> dict:
    r = resolved["preprocessing"]["resolution"]
    return {"name": name, "shape": [1, 3, r, r], "dtype": "float32", "layout": "NCHW", "channel_order": "RGB",
            "value": "normalised: (pixel / 255 - mean) / std per channel"}


def write_manifest(folder: Path, *, fmt: str, resolved: dict, figures: dict, extra: dict | None = None) -> dict:
    """manifest.json over every file in `folder` (sha256 + size), with model, preprocessing and figures."""
    import datetime

    (folder / "labels.txt").write_text("\n".join(resolved["labels"]) + "\n")
    files = [file_entry(p, folder) for p in sorted(folder.iterdir()) if p.name != "manifest.json"]
    manifest = {
        "format": fmt,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": {"name": resolved["model_name"], **resolved["config"], "params": resolved["params"], "macs": resolved["macs"]},
        "source_checkpoint": {"path": resolved["source"], "sha256": resolved["source_sha256"], "format": resolved["source_format"]},
        "preprocessing": {**resolved["preprocessing"], "resize_rule": "bilinear to resolution x resolution, half-pixel centres, no crop"},
        "labels": resolved["labels"],
        "files": files,
        "figures": figures,
        **(extra or {}),
        **environment(),
    }
    write_json(folder / "manifest.json", manifest)
    return manifest


@dataclass
class Publication:
    """What a package stage publishes: the resolved model, variants, output folder and figures."""

    resolved: dict
    variants: list[str]
    name: str
    final: Path
    figures: dict
    table: str


def publication(ctx: StageContext, variants_param: str, row_label: str) -> Publication:
    """Gather the package stage's inputs; `row_label` is formatted with the variant (`{v}`)."""
    resolved = ctx.inputs["resolve"].meta
    variants = list(ctx.params[variants_param])
    name = output_name(ctx, resolved)
    figures = {v: ctx.inputs[f"verify[{v}]"].meta["figures"] for v in variants}
    table = figures_table({row_label.format(v=v): f for v, f in figures.items()})
    return Publication(resolved, variants, name, Path(ctx.params["out"]) / name, figures, table)


def publish(ctx: StageContext, pub: Publication, build) -> dict:
    """Build the folder atomically (nothing appears unless `build` completes), print the figures."""
    from ..model_card import write_card_at_publish
    from ..pipeline import publish_dir

    def build_with_card(folder: Path) -> None:
        build(folder)
        write_card_at_publish(ctx, folder, pub.final)  # after the manifest: the card pins its sha256

    publish_dir(pub.final, build_with_card)
    print(f"\n{pub.table}\n\n[{ctx.pipeline.name}] published {pub.final}", flush=True)
    return {"published": str(pub.final), "figures": pub.figures}


def figures_table(rows: dict[str, dict]) -> str:
    """Markdown table: one row per variant with the usual parity/accuracy columns."""
    head = "| variant | images | top-1 % | drop (pt) | top-1 agreement % | max abs dlogit | min cosine |\n|---|---|---|---|---|---|---|"
    lines = [head]
    for name, f in rows.items():
        lines.append(f"| {name} | {f['images']} | {100 * f['top1']:.2f} | {f['top1_drop_pts']:.2f} | "
                     f"{100 * f['top1_agreement']:.2f} | {f['max_abs_logit_diff']:.2e} | {f['min_cosine']:.6f} |")
    return "\n".join(lines)
