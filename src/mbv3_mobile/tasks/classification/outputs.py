"""What a classifier is and outputs: checkpoints of every layout the model room reads, logits of
one row per picture, computed in eager PyTorch as the reference every format is compared with."""

from __future__ import annotations

import torch

from mbv3_mobile.data.pictures import Pictures
from mbv3_mobile.data.preprocess import Preprocessing
from mbv3_mobile.data.selection import check_source, choose
from mbv3_mobile.data.selection import pictures as select
from mbv3_mobile.model.checkpoint import Checkpoint
from mbv3_mobile.model.checkpoint import load_checkpoint as _load


def load_checkpoint(path, *, arch: str | None = None, width: float | None = None) -> Checkpoint:
    """Our .safetensors, a torchvision state_dict or a timm one (key map), as a classifier."""
    return _load(path, arch=arch, width=width)


def output_spec(resolved, *, batch: int | str = 1, name: str | None = None) -> dict:
    """The manifest's "output": logits, one row per picture, one column per label."""
    return {**({"name": name} if name else {}), "shape": [batch, resolved.num_classes], "dtype": "float32",
            "meaning": "logits (labels.txt names the columns)"}


@torch.no_grad()
def reference(model: torch.nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Eager fp32 logits of normalised pictures (N, 3, R, R), in batches."""
    return torch.cat([model.eval()(images[i : i + batch]) for i in range(0, len(images), batch)])


def pictures(*, given: str, images: str, labels: list[str], pre: Preprocessing, purpose: str, split: str,
             limit: int | None = None, seed: int = 0, what: str = "--images") -> Pictures:
    """The pipelines' defaults (`data.selection.choose`): given data, the user's pictures,
    Fashion-MNIST for a model of its classes, the sample photos."""
    source, labelled = choose(given=given, images=images, labels=labels, purpose=purpose)
    return select(source, labelled, pre, labels, split=split, limit=limit, seed=seed, what=what)


def check_pictures(*, given: str, images: str, labels: list[str], purpose: str, what: str) -> None:
    """The pictures `pictures` would read can be read (headers only: seconds, no decoding)."""
    source, labelled = choose(given=given, images=images, labels=labels, purpose=purpose)
    check_source(source, labelled, labels, what)
