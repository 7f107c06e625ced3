"""The models phones run, for the bench: torchvision-layout MobileNetV3 Large / Small at 224 px.

The project has no ImageNet-trained weights (none can be had offline), so these are **random
weights with BatchNorm statistics calibrated on the bundled sample photos**: latency does not
depend on the weights' values, only on the graph, and photo-calibrated BatchNorm keeps activations
in a realistic range, so int8 calibration, ranges and the parity gates see a network that behaves
like a trained one (not one that predicts the same class for every picture). Residual branches
start near identity (last BN scale x0.05, "zero-init residual"), BN statistics are measured on the
sample photos and then perturbed, and the head points 16 random classes at the photos' features.
Stated as such in every report that uses them.

The segmentation workloads, LR-ASPP Large / Small 1.0 at 512 px with torchvision's 21 VOC classes,
are made the same way (photo-calibrated BatchNorm, residual branches near identity), with a
nearest-centroid head: the high-level classifier points 4 classes at k-means centroids of the
photos' pixel features, the low-level classifier is zero. Their checkpoints say `weights = "random"`,
so the export pipelines judge them by their `_random` gate tables (see `tasks.TaskSpec.gate_table`).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from mbv3_mobile.crossformat.bench.common import BenchError

# name -> (task, arch, width, resolution); "default" is the task's embedded model (no checkpoint).
WORKLOADS = {"large-224": ("classification", "large", 1.0, 224), "small-224": ("classification", "small", 1.0, 224),
             "lraspp-large-512": ("segmentation", "large", 1.0, 512),
             "lraspp-small-512": ("segmentation", "small", 1.0, 512)}
DEFAULT = "default"
# What `--models` means when not given, per task (05_bench.toml's `models` is the classification list).
DEFAULT_MODELS = {"segmentation": ["default", "lraspp-large-512", "lraspp-small-512"]}
VOC_LABELS = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
              "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
WEIGHTS_NOTE = ("random torchvision-layout weights with BatchNorm statistics calibrated on the bundled sample photos "
                "(no ImageNet-trained weights offline): latency and MACs are the real model's, accuracy is not")
SEGMENTER_WEIGHTS_NOTE = ("random LR-ASPP weights (torchvision's layout, 21 VOC classes) with BatchNorm statistics "
                          "calibrated on the bundled sample photos and a nearest-centroid head (no trained LR-ASPP "
                          "offline): latency and MACs are the real model's, masks are not")


def photo_batch(resolution: int) -> torch.Tensor:
    """The bundled sample photos (torchvision-v1 preprocessing) as model input at `resolution`:
    what calibrates the random models' BatchNorm and their int8 programs."""
    from mbv3_mobile.data.pictures import sample_photos
    from mbv3_mobile.data.preprocess import preset

    pre = preset("torchvision-v1")
    x = sample_photos(pre).normalized(pre)
    if resolution != x.shape[-1]:
        x = torch.nn.functional.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return x


def randomized_model(arch: str, width: float = 1.0, seed: int = 0, residual_scale: float = 0.05,
                     resolution: int = 224) -> torch.nn.Module:
    """`build_model(arch, width, 1000)` in eval mode with random weights that behave like a trained
    classifier's on real photos (see the module docstring)."""
    from mbv3_mobile.model.network import build_model

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    m = build_model(arch=arch, width=width, num_classes=1000)
    x = photo_batch(resolution)
    _calibrate_bn(m, x, m.features, residual_scale, batch=len(x))
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_var.mul_(0.8 + 0.45 * torch.rand(mod.running_var.shape, generator=g))
                mod.running_mean.add_(0.05 * torch.randn(mod.running_mean.shape, generator=g)
                                      * mod.running_mean.abs().mean())
        feats = {}
        hook = m.classifier[2].register_forward_hook(lambda _m, _i, out: feats.setdefault("f", out))
        m(x)
        hook.remove()
        f = feats["f"] - feats["f"].mean(0, keepdim=True)
        f = f.view(-1, 5, f.shape[1]).mean(1)  # one class per photo (its 5 views together)
        q = torch.linalg.qr(f.T).Q.T
        q = q * torch.sign((q * f).sum(1, keepdim=True))  # QR's signs are arbitrary: point each at its photo
        f = q * f.norm(dim=1, keepdim=True)  # orthogonal prototypes: clear margins, as a trained head has
        w = torch.randn(1000, f.shape[1], generator=g) / math.sqrt(f.shape[1])
        classes = torch.randperm(1000, generator=g)[: len(f)]
        w[classes] = 4 * f / f.norm(dim=1, keepdim=True)
        m.classifier[3].weight.copy_(w * 3)
        m.classifier[3].bias.zero_()
    return m


def _calibrate_bn(m: torch.nn.Module, x: torch.Tensor, residuals, residual_scale: float, batch: int) -> None:
    """Photo BatchNorm statistics for random weights, residual branches near identity."""
    for block in residuals:
        if getattr(block, "use_res_connect", False):
            block.block[-1][1].weight.data.mul_(residual_scale)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None  # a cumulative average over every batch
    m.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            m(x[i : i + batch])
    m.eval()


SEGMENT_CLASSES = 4  # classes the random head tells apart; with more, k-means' clusters of random features blur


def randomized_segmenter(arch: str, width: float = 1.0, seed: int = 0, residual_scale: float = 0.05,
                         resolution: int = 512) -> torch.nn.Module:
    """LR-ASPP (torchvision's 21 classes) with random weights and a nearest-centroid head over the
    sample photos' pixel features (see the module docstring)."""
    from mbv3_mobile.data.pictures import sample_photos
    from mbv3_mobile.data.preprocess import preset
    from mbv3_mobile.tasks.segmentation.network import lraspp_mobilenet_v3_large, lraspp_mobilenet_v3_small

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    m = (lraspp_mobilenet_v3_large if arch == "large" else lraspp_mobilenet_v3_small)(width=width,
                                                                                       num_classes=len(VOC_LABELS))
    pre = preset("mbv3", resolution)
    x = sample_photos(pre).normalized(pre)
    _calibrate_bn(m, x, m.backbone, residual_scale, batch=10)
    head = m.classifier
    feats = {}
    hook = head.high_classifier.register_forward_hook(lambda _m, i, _o: (feats.setdefault("f", i[0]), None)[1])
    with torch.no_grad():
        m(x[:40])
    hook.remove()
    f = feats["f"].permute(0, 2, 3, 1).reshape(-1, feats["f"].shape[1])
    centroids = f[torch.randperm(len(f), generator=g)[:SEGMENT_CLASSES]].clone()
    for _ in range(20):  # Lloyd's k-means: a few dozen lines of scikit-learn are not worth its import here
        nearest = torch.cdist(f, centroids).argmin(1)
        for k in range(SEGMENT_CLASSES):
            if (nearest == k).any():
                centroids[k] = f[nearest == k].mean(0)
    with torch.no_grad():
        weight = torch.zeros(len(VOC_LABELS), f.shape[1])
        bias = torch.full((len(VOC_LABELS),), -50.0)  # the other classes: never the argmax
        classes = torch.randperm(len(VOC_LABELS), generator=g)[:SEGMENT_CLASSES]
        weight[classes], bias[classes] = centroids, -0.5 * (centroids**2).sum(1)  # argmax = nearest centroid
        head.high_classifier.weight.copy_(weight[:, :, None, None])
        head.high_classifier.bias.copy_(bias)
        head.low_classifier.weight.zero_()
        head.low_classifier.bias.zero_()
    return m


def workload_checkpoint(name: str, folder: Path | None = None) -> Path:
    """A checkpoint for a named workload, made once (deterministic, seed 0) and kept in the cache so
    the export pipelines' cached stages are reused from run to run: a torchvision-layout .pth for a
    classifier, our .safetensors (saying `weights = "random"`) for a segmenter."""
    if name not in WORKLOADS:
        raise _unknown(name)
    from mbv3_mobile.pipeline.runner import cache_dir

    task, arch, width, res = WORKLOADS[name]
    folder = folder or cache_dir().parent / "bench-models"
    if task == "segmentation":
        path = folder / f"lraspp_mobilenet_v3_{arch}_{int(width * 100)}_{res}px_random_seed0.safetensors"
    else:
        path = folder / f"mobilenet_v3_{arch}_{int(width * 100)}_random_bn_seed0.pth"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")  # same suffix: the saver checks it
        if task == "segmentation":
            from mbv3_mobile.data.preprocess import preset
            from mbv3_mobile.tasks.segmentation.checkpoint import save_segmentation_checkpoint

            save_segmentation_checkpoint(tmp, randomized_segmenter(arch, width, resolution=res),
                                         preprocessing=preset("mbv3", res), labels=list(VOC_LABELS),
                                         extra={"weights": "random", "weights_note": SEGMENTER_WEIGHTS_NOTE})
        else:
            torch.save(randomized_model(arch, width).state_dict(), tmp)
        tmp.replace(path)
    return path


def _unknown(name: str) -> BenchError:
    return BenchError(f"unknown bench model {name!r}: choose from {DEFAULT}, {', '.join(WORKLOADS)} or a checkpoint path")


def models_for_task(spec: list[str], task: str, default_spec: list[str]) -> list[str]:
    """`--models` as given, or (left at the classification default) the task's own list."""
    return DEFAULT_MODELS.get(task, spec) if list(spec) == list(default_spec) else list(spec)


def workload_task(name: str) -> str | None:
    """The task of a named workload (None for `default` and checkpoint paths)."""
    return WORKLOADS[name][0] if name in WORKLOADS else None


def resolve_models(spec: list[str], checkpoint: str) -> list[tuple[str, str, str | None]]:
    """`--models default,large-224,small-224` -> [(label, checkpoint path or '', weights note)].
    An explicit --checkpoint replaces the list with that one model."""
    if checkpoint:
        return [(Path(checkpoint).stem, checkpoint, None)]
    out = []
    for name in [str(s).strip() for s in spec if str(s).strip()]:
        if name == DEFAULT:
            out.append((DEFAULT, "", None))
        elif name in WORKLOADS:
            note = SEGMENTER_WEIGHTS_NOTE if workload_task(name) == "segmentation" else WEIGHTS_NOTE
            out.append((name, str(workload_checkpoint(name)), note))
        elif Path(name).is_file():
            out.append((Path(name).stem, name, None))
        else:
            raise _unknown(name)
    if not out:
        raise BenchError(f"--models is empty: name at least one model ({DEFAULT}, {', '.join(WORKLOADS)})")
    return out
