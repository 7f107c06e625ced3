"""What an LR-ASPP is and outputs: checkpoints of every layout it loads, logits per class and pixel
at the input size (N x C x R x R: the bilinear upsample runs in the graph, inside the delegate), and
the real pictures its exports are checked on: masks where there are any (a segmentation folder, the
composite test bed), else plain pictures for the label-free figures."""

from __future__ import annotations

from pathlib import Path

import torch

from mbv3_mobile.core.paths import cache_root
from mbv3_mobile.data.datasets import DataError
from mbv3_mobile.data.pictures import Pictures
from mbv3_mobile.data.preprocess import Preprocessing
from mbv3_mobile.data.segmentation import composite_folder, composite_labels, load_segmentation_folder
from mbv3_mobile.data.selection import SAMPLES, unlabelled_pictures
from mbv3_mobile.model.checkpoint import Checkpoint, CheckpointError
from mbv3_mobile.tasks.segmentation.checkpoint import load_segmentation_checkpoint

COMPOSITE = "composite"
COMPOSITE_PICTURES = {"eval": 200, "calib": 200}  # composite pictures a check uses when it names no count
REFERENCE_BATCH = 16  # N x C x R x R logits: memory per batch grows with R^2
NO_QAT = ("QAT is not available for segmentation: use --quant fp32,ptq (parity and bench: --android-quant fp32,ptq); "
          "PTQ calibration needs no masks")


def load_checkpoint(path, *, arch: str | None = None, width: float | None = None) -> Checkpoint:
    """Our LR-ASPP .safetensors or torchvision's `lraspp_mobilenet_v3_*` state_dict; a classifier is
    refused (train one with `mbv3 train --task segmentation --init-backbone FILE`)."""
    ck = load_segmentation_checkpoint(path)
    for name, asked in (("arch", arch), ("width", width)):
        if asked is not None and getattr(ck.config, name) != asked:
            raise CheckpointError(f"{path} is {ck.config.name} ({name} {getattr(ck.config, name)}), not --{name} {asked}")
    return ck


def output_spec(resolved, *, batch: int | str = 1, name: str | None = None) -> dict:
    r = resolved.resolution
    return {**({"name": name} if name else {}), "shape": [batch, resolved.num_classes, r, r], "dtype": "float32",
            "meaning": "logits per class and pixel at the input size; the label map is their argmax over "
                       "axis 1 (labels.txt names the classes, 0 = background)"}


@torch.no_grad()
def reference(model: torch.nn.Module, images: torch.Tensor, batch: int = REFERENCE_BATCH) -> torch.Tensor:
    """Eager fp32 logits N x C x R x R of normalised pictures, in batches."""
    return torch.cat([model.eval()(images[i : i + batch]) for i in range(0, len(images), batch)])


def _is_segmentation_folder(spec: str) -> bool:
    root = Path(spec)
    return (root / "masks").is_dir() and (root / "images").is_dir()


def _masked(spec: str, pre: Preprocessing, labels: list[str], *, split: str, limit: int | None, seed: int,
            purpose: str) -> Pictures:
    if spec == COMPOSITE:
        count = limit or COMPOSITE_PICTURES.get(purpose, 200)
        folder = composite_folder(cache_root(), split=split, count=count, resolution=pre.resolution, seed=seed)
        data, source = load_segmentation_folder(folder, pre), f"composite {split} split"
    else:
        data, source = load_segmentation_folder(spec, pre, limit=limit, seed=seed), str(spec)
    if list(data.labels) != list(labels):
        raise DataError(f"the classes of {source} {list(data.labels)[:5]}... are not the model's labels "
                        f"{list(labels)[:5]}...; give masks of the model's classes (labels.txt in the same order), "
                        "or unlabelled pictures with --images DIR")
    return Pictures(data.images, [f"{source}#{f}" for f in data.files], source, data.masks.clone(), tuple(data.labels))


def pictures(*, given: str, images: str, labels: list[str], pre: Preprocessing, purpose: str, split: str,
             limit: int | None = None, seed: int = 0, what: str = "--images") -> Pictures:
    """The pipelines' defaults for a segmenter: given data first (a segmentation folder or
    'composite', with masks), then --images (masks when it is a segmentation folder), then the
    composite test bed for a model of its classes, then the sample photos (no masks)."""
    if purpose == "train":
        raise DataError(NO_QAT)
    for spec, flag in ((given, what), (images, "--images")):
        if not spec:
            continue
        if spec == COMPOSITE or _is_segmentation_folder(spec):
            return _masked(spec, pre, labels, split=split, limit=limit, seed=seed, purpose=purpose)
        if purpose == "eval" and spec == given:
            raise DataError(f"{flag} {spec}: a segmentation check needs masks: a folder with images/, masks/ and "
                            "labels.txt, or 'composite'; for pictures without masks use --images DIR")
        return unlabelled_pictures(spec, pre, limit=limit, seed=seed, what=flag)
    if list(labels) == list(composite_labels()):
        return _masked(COMPOSITE, pre, labels, split=split, limit=limit, seed=seed, purpose=purpose)
    return unlabelled_pictures(SAMPLES, pre, limit=limit, seed=seed)


def check_pictures(*, given: str, images: str, labels: list[str], purpose: str, what: str) -> None:
    """The pictures `pictures` would read can be read, headers only (seconds, nothing decoded): a
    segmentation folder's pairing, mask modes and sizes and its labels.txt, or a picture folder."""
    from mbv3_mobile.data.segmentation import scan_segmentation_folder
    from mbv3_mobile.data.selection import check_picture_folder

    if purpose == "train":
        raise DataError(NO_QAT)
    for spec, flag in ((given, what), (images, "--images")):
        if not spec or spec == COMPOSITE:
            continue
        if spec == SAMPLES:  # the photos in the scikit-image wheel: no masks, label-free figures
            if purpose == "eval" and spec == given:
                raise DataError(f"{flag} samples: a segmentation check needs masks; the sample photos have none "
                                "(use --images samples for the label-free figures)")
            return
        if _is_segmentation_folder(spec):
            scan = scan_segmentation_folder(spec)
            if list(scan.labels) != list(labels):
                raise DataError(f"{flag} {spec}: its labels.txt names {list(scan.labels)[:4]}..., not the model's labels "
                                f"{list(labels)[:4]}...; give masks of the model's classes, in the same order")
        elif purpose == "eval" and spec == given:
            raise DataError(f"{flag} {spec}: a segmentation check needs masks: a folder with images/, masks/ and "
                            "labels.txt, or 'composite'; for pictures without masks use --images DIR")
        else:
            check_picture_folder(spec, flag)
        return
