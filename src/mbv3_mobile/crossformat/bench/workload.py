"""The models phones run, for the bench: torchvision-layout MobileNetV3 Large / Small at 224 px.

The project has no ImageNet-trained weights (none can be had offline), so these are **random
weights with BatchNorm statistics calibrated on the bundled sample photos**: latency does not
depend on the weights' values, only on the graph, and photo-calibrated BatchNorm keeps activations
in a realistic range, so int8 calibration, ranges and the parity gates see a network that behaves
like a trained one (not one that predicts the same class for every picture). Residual branches
start near identity (last BN scale x0.05, "zero-init residual"), BN statistics are measured on the
sample photos and then perturbed, and the head points 16 random classes at the photos' features.
Stated as such in every report that uses them.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from mbv3_mobile.crossformat.bench.common import BenchError

# name -> (arch, width, resolution); "default" is the embedded Fashion-MNIST model (no checkpoint).
WORKLOADS = {"large-224": ("large", 1.0, 224), "small-224": ("small", 1.0, 224)}
DEFAULT = "default"
WEIGHTS_NOTE = ("random torchvision-layout weights with BatchNorm statistics calibrated on the bundled sample photos "
                "(no ImageNet-trained weights offline): latency and MACs are the real model's, accuracy is not")


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
    for block in m.features:
        if getattr(block, "use_res_connect", False):
            block.block[-1][1].weight.data.mul_(residual_scale)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None
    m.train()
    with torch.no_grad():
        m(x)
    m.eval()
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


def workload_checkpoint(name: str, folder: Path | None = None) -> Path:
    """A torchvision-layout .pth for a named workload, made once (deterministic, seed 0) and kept in
    the cache so the export pipelines' cached stages are reused from run to run."""
    if name not in WORKLOADS:
        raise _unknown(name)
    from mbv3_mobile.pipeline.runner import cache_dir

    arch, width, _res = WORKLOADS[name]
    folder = folder or cache_dir().parent / "bench-models"
    path = folder / f"mobilenet_v3_{arch}_{int(width * 100)}_random_bn_seed0.pth"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(randomized_model(arch, width).state_dict(), tmp)
        tmp.replace(path)
    return path


def _unknown(name: str) -> BenchError:
    return BenchError(f"unknown bench model {name!r}: choose from {DEFAULT}, {', '.join(WORKLOADS)} or a checkpoint path")


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
            out.append((name, str(workload_checkpoint(name)), WEIGHTS_NOTE))
        elif Path(name).is_file():
            out.append((Path(name).stem, name, None))
        else:
            raise _unknown(name)
    if not out:
        raise BenchError("--models is empty: name at least one model (default, large-224, small-224)")
    return out
