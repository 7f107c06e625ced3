"""Stages every export pipeline shares: `resolve_checkpoint` (the first stage) and the verify
step's common shape (real pictures -> eager fp32 reference and the format's logits -> figures,
judged later by the runner against the pipeline's gates)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from mbv3_mobile.core.hashing import sha256_file
from mbv3_mobile.data.preprocess import Preprocessing
from mbv3_mobile.data.selection import labelled_images
from mbv3_mobile.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mbv3_mobile.model.flops import profile_model
from mbv3_mobile.pipeline.runner import StageContext, StageResult
from mbv3_mobile.pipeline.spec import PipelineError
from mbv3_mobile.verify.compare import compare_logits

MODEL_FILE = "model.safetensors"  # resolve's declared output "model"


def resolve_checkpoint_fingerprint(ctx: StageContext) -> str:
    ckpt = ctx.params.get("checkpoint")
    if ckpt:
        path = Path(ckpt)
        if not path.is_file():
            raise PipelineError(f"--checkpoint {path} does not exist; pass a .safetensors/.pth file or omit it "
                                "to use the embedded Fashion-MNIST default")
        return "file:" + sha256_file(path)
    from mbv3_mobile.train.zoo import recipe_fingerprint

    return recipe_fingerprint(ctx.params.get("recipe", "default"))


def resolve_checkpoint(ctx: StageContext) -> dict:
    """The user's checkpoint, or the embedded default, normalised to our format."""
    p = ctx.params
    if p.get("checkpoint"):
        source = Path(p["checkpoint"])
    else:
        from mbv3_mobile.train.zoo import ensure_model

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
    save_checkpoint(ctx.out("model"), ck.model, preprocessing=pre, labels=labels, extra=ck.extra)
    prof = profile_model(ck.model, pre.resolution)
    ctx.log(f"{ck.config.name} ({ck.source}) at {pre.resolution} px, {prof.params:,} params, {prof.macs / 1e6:.1f} M MACs")
    return {
        "source": str(source), "source_format": ck.source, "source_sha256": sha256_file(source),
        "config": ck.config.to_dict(), "model_name": ck.config.name, "preprocessing": pre.to_dict(), "labels": labels,
        "params": prof.params, "macs": prof.macs, "train_summary": {k: ck.extra.get(k) for k in ("val_top1", "epochs")},
    }


def load_resolved(result: StageResult) -> tuple[torch.nn.Module, Preprocessing, list[str]]:
    ck = load_checkpoint(result.out("model"))
    return ck.model.eval(), ck.preprocessing, ck.labels


@torch.no_grad()
def eager_logits(model: torch.nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([model.eval()(images[i : i + batch]) for i in range(0, len(images), batch)])


def verify_against_eager(ctx: StageContext, what: str, run: Callable, *, limit: int | None, gate: str,
                         artifact: Path) -> dict:
    """Real test pictures -> eager fp32 reference and the format's logits (`run(images, pre)`) ->
    figures. Returns the verify stage's meta: the runner judges `figures` against `[gates.<gate>]`
    on every run, and publishing checks `measured` (sha256 of the bytes measured) against the file
    it ships."""
    model, pre, labels = load_resolved(ctx.inputs["resolve"])
    x, y = labelled_images(ctx.params["eval_data"], pre, labels, split="test", limit=limit)
    reference = eager_logits(model, x)
    ctx.log(f"{what}: {len(x)} real test pictures")
    figures = compare_logits(reference, run(x, pre), y)
    return {"figures": figures, "gate": gate, "what": what, "pictures": {"data": ctx.params["eval_data"], "split": "test",
                                                                          "count": len(x), "labelled": True},
            "measured": _measured(artifact)}


def _measured(path: Path) -> dict:
    if path.is_dir():
        return {str(p.relative_to(path)): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()}
    return {path.name: sha256_file(path)}
