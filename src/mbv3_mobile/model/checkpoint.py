"""Checkpoints: the project's own (.safetensors with config, preprocessing and labels in its
metadata), torchvision `.pth` state_dicts, and timm state_dicts through a key map.

Every path validates the full key/shape set *before* touching a model, so a bad file raises one
`CheckpointError` and nothing is half loaded. Torch files are read with `weights_only=True`.

timm -> torchvision key map (timm `mobilenetv3_{large,small}_*`, `*_minimal_*`):
    conv_stem / bn1                       -> features.0.0 / features.0.1
    blocks.S.I (flattened in order = n)   -> features.n+1
      depthwise-separable block (exp == in, first block):
        conv_dw, bn1 -> block.0.{0,1};  se.conv_reduce/conv_expand -> block.1.fc1/fc2;
        conv_pw, bn2 -> block.{1|2}.{0,1}
      inverted residual:
        conv_pw, bn1 -> block.0.{0,1};  conv_dw, bn2 -> block.1.{0,1};
        se.conv_reduce/conv_expand -> block.2.fc1/fc2;  conv_pwl, bn3 -> block.{2|3}.{0,1}
      last ConvBnAct (1x1 to 6x channels): conv, bn1 -> features.N.{0,1}
    conv_head (1x1 conv with bias, after pooling) -> classifier.0 (Linear; weight reshaped [o,i,1,1]->[o,i])
    classifier                             -> classifier.3
The map is exact: timm's conv_head on a 1x1 pooled map is the same affine map as torchvision's
Linear, and timm's BN eps (1e-5) is folded into running_var. What cannot map: timm's `tf_mobilenetv3_*` weights load (same shapes) but were trained with
TF "SAME" asymmetric padding, so outputs differ; `mobilenetv3_rw` / `*_150d` / `*_100.miil_in21k`-style
heads with extra norm layers or other stem/head widths have keys or shapes with no counterpart and
are rejected naming them; timm's width != 1.0 models (`mobilenetv3_large_075`, `*_small_050`, ...)
keep the 1280/1024 head unscaled where torchvision scales it with the width, so only the
`*_100` timm models have a torchvision-layout counterpart.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mbv3_mobile.core.atomic import atomic_path
from mbv3_mobile.core.errors import UserError
from mbv3_mobile.data.preprocess import Preprocessing
from mbv3_mobile.model.config import ARCHS, WIDTHS, ModelConfig
from mbv3_mobile.model.network import MobileNetV3, build_model

FORMAT_TAG = "mbv3-mobile/1"
_SHOW = 5  # how many offending keys an error lists


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded as asked; the message says why and what it seems to be."""


@dataclass
class Checkpoint:
    model: MobileNetV3  # or a task's network on this backbone (tasks/<task>/checkpoint.py)
    config: ModelConfig  # or that task's config
    preprocessing: Preprocessing | None = None
    labels: list[str] | None = None
    extra: dict = field(default_factory=dict)
    source: str = "mbv3-mobile"


# ---------------------------------------------------------------- reading raw state_dicts


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and (safetensors) metadata from a file; unwraps {'state_dict': ...}-style dicts."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    meta: dict[str, str] = {}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        else:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every reader failure is a corrupt/unsupported file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(exc).__name__}: {first[:200]}). "
            "Expected a .safetensors file or a torch .pth/.pt holding a plain state_dict "
            "(loaded with weights_only=True; re-save with torch.save(model.state_dict(), path))."
        ) from None
    for wrapper in ("state_dict", "model_ema", "model", "state_dict_ema"):
        if isinstance(tensors, dict) and isinstance(tensors.get(wrapper), dict):
            tensors = tensors[wrapper]
            break
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise CheckpointError(f"{path} holds a {type(tensors).__name__}, not a state_dict of tensors")
    # DDP / torch.compile wrappers prefix every key.
    for prefix in ("module.", "_orig_mod."):
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors, meta


def checkpoint_extra(path: str | os.PathLike) -> dict:
    """The `extra` metadata of one of our .safetensors files (e.g. its task), read from the header
    alone; {} for any other file or one that cannot be read (loading it says what is wrong)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        return json.loads(meta.get("extra", "{}")) if meta.get("format") == FORMAT_TAG else {}
    except Exception:  # noqa: BLE001 - unreadable here means "no metadata"; the load reports it
        return {}


def detect_source(state_dict: dict[str, torch.Tensor]) -> str:
    if "features.0.0.weight" in state_dict:
        return "torchvision"
    if "conv_stem.weight" in state_dict:
        return "timm"
    raise CheckpointError(
        "this is not a MobileNetV3 checkpoint: its state_dict has neither torchvision's layout "
        f"(features.0.0.weight) nor timm's (conv_stem.weight); first keys: {list(state_dict)[:_SHOW]}"
    )


# ---------------------------------------------------------------- layout checks


def state_layout(build: Callable[[], torch.nn.Module]) -> dict[str, tuple[int, ...]]:
    """{key: shape} of the state_dict of the model `build()` makes, built on the meta device (no
    memory, no initialisation): what a file must hold to load into it."""
    with torch.device("meta"):
        model = build()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _layout(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    return state_layout(lambda: build_model(config))


def guess_config(state_dict: dict[str, torch.Tensor]) -> ModelConfig | None:
    """The arch/width/minimal/num_classes whose layout matches `state_dict` exactly, if any."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    head = shapes.get("classifier.3.weight")
    if head is None or len(head) != 2:
        return None
    for arch in ARCHS:
        for width in WIDTHS:
            for minimal in (False, True):
                cfg = ModelConfig(arch=arch, width=width, num_classes=head[0], minimal=minimal)
                if _layout(cfg) == shapes:
                    return cfg
    return None


def check_layout(state_dict: dict[str, torch.Tensor], config: ModelConfig, what: str = "checkpoint") -> None:
    """Raise one CheckpointError listing missing/unexpected/mis-shaped keys, or return."""
    expected = _layout(config)
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    mismatched = [f"{k}: file {got[k]} vs model {expected[k]}" for k in expected if k in got and got[k] != expected[k]]
    if not (missing or unexpected or mismatched):
        return
    parts = [f"{what} does not fit {config.name} (num_classes={config.num_classes})"]
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:_SHOW])}{more}")
    seems = guess_config(state_dict)
    if seems is not None:
        parts.append(
            f"the file seems to be for {seems.name} with num_classes={seems.num_classes} "
            f"(arch={seems.arch!r}, width={seems.width}, minimal={seems.minimal})"
        )
    else:
        parts.append("it matches no MobileNetV3 variant this project builds")
    if seems is not None and seems.num_classes != config.num_classes and _same_backbone(seems, config):
        parts.append("to fine-tune with a new head, load it with num_classes unchanged and call reset_classifier()")
    raise CheckpointError("; ".join(parts))


def _same_backbone(a: ModelConfig, b: ModelConfig) -> bool:
    return (a.arch, a.width, a.minimal) == (b.arch, b.width, b.minimal)


# ---------------------------------------------------------------- timm key map

_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
_TIMM_DS = {"conv_dw": "0.0", "bn1": "0.1", "se.conv_reduce": "1.fc1", "se.conv_expand": "1.fc2"}
_TIMM_IR = {"conv_pw": "0.0", "bn1": "0.1", "conv_dw": "1.0", "bn2": "1.1", "se.conv_reduce": "2.fc1", "se.conv_expand": "2.fc2"}


TIMM_BN_EPS = 1e-5  # timm's mobilenetv3_* BatchNorm eps; its tf_mobilenetv3_* ports use 1e-3
OUR_BN_EPS = 1e-3


def timm_to_torchvision(state_dict: dict[str, torch.Tensor], bn_eps: float = TIMM_BN_EPS) -> dict[str, torch.Tensor]:
    """Rename a timm mobilenetv3 state_dict to this project's (= torchvision's) layout.

    timm normalises with `bn_eps`; our BN uses 1e-3. Shifting running_var by the difference keeps
    `var + eps` -- the only place eps enters eval-mode BN -- identical, so outputs match exactly.
    """
    block_ids = sorted({(int(m[1]), int(m[2])) for k in state_dict if (m := _TIMM_BLOCK.match(k))})
    flat = {bid: n + 1 for n, bid in enumerate(block_ids)}
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in state_dict.items():
        new = _map_timm_key(key, state_dict, flat, len(block_ids))
        if new is None:
            unmapped.append(key)
            continue
        if new == "classifier.0.weight" and value.dim() == 4:
            value = value.flatten(1)
        if new.endswith("running_var"):
            value = value + (bn_eps - OUR_BN_EPS)
        out[new] = value
    if unmapped:
        raise CheckpointError(
            f"timm checkpoint has {len(unmapped)} keys with no torchvision counterpart: "
            f"{', '.join(unmapped[:_SHOW])}; see mbv3_mobile.checkpoint's docstring for what maps"
        )
    return out


def _split_param(rest: str) -> tuple[str, str]:
    module, _, param = rest.rpartition(".")
    return module, param


def _map_timm_key(key: str, sd: dict, flat: dict, n_blocks: int) -> str | None:
    module, param = _split_param(key)
    if module == "conv_stem":
        return f"features.0.0.{param}"
    if module == "bn1":
        return f"features.0.1.{param}"
    if module == "conv_head":
        return f"classifier.0.{param}"
    if module == "classifier":
        return f"classifier.3.{param}"
    m = _TIMM_BLOCK.match(key)
    if m is None:
        return None
    idx = flat[(int(m[1]), int(m[2]))]
    prefix = f"blocks.{m[1]}.{m[2]}"
    sub, param = _split_param(m[3])
    if idx == n_blocks:  # the last timm "block" is the 1x1 ConvBnAct to 6x channels
        return {"conv": f"features.{idx}.0.{param}", "bn1": f"features.{idx}.1.{param}"}.get(sub)
    has_se = f"{prefix}.se.conv_reduce.weight" in sd
    if f"{prefix}.conv_pwl.weight" in sd:  # inverted residual
        proj = 3 if has_se else 2
        table = {**_TIMM_IR, "conv_pwl": f"{proj}.0", "bn3": f"{proj}.1"}
    else:  # depthwise-separable (no expansion conv)
        proj = 2 if has_se else 1
        table = {**_TIMM_DS, "conv_pw": f"{proj}.0", "bn2": f"{proj}.1"}
    target = table.get(sub)
    return None if target is None else f"features.{idx}.block.{target}.{param}"


# ---------------------------------------------------------------- public loaders


def load_checkpoint(
    path: str | os.PathLike,
    config: ModelConfig | None = None,
    *,
    arch: str | None = None,
    width: float | None = None,
    num_classes: int | None = None,
    timm_bn_eps: float = TIMM_BN_EPS,
) -> Checkpoint:
    """Load any supported checkpoint into a fresh model (eval mode).

    For the project's own files the config comes from the file; `config`/`arch`/`width`/
    `num_classes`, when given, are checked against it. For torchvision/timm files the layout is
    inferred from the shapes unless given.
    """
    state_dict, meta = read_state_dict(path)
    requested = _requested(config, arch, width, num_classes)
    if meta.get("format") == FORMAT_TAG:
        task = json.loads(meta.get("extra", "{}")).get("task", "classification")
        if task != "classification":
            raise CheckpointError(f"{path} is a {task} checkpoint, not a classifier: use --task {task}")
        own = ModelConfig.from_dict(json.loads(meta["config"]))
        _check_request(own, requested, path)
        check_layout(state_dict, own, what=str(path))
        model = build_model(own)
        model.load_state_dict(state_dict, strict=True)
        return Checkpoint(
            model=model.eval(),
            config=own,
            preprocessing=Preprocessing.from_dict(json.loads(meta["preprocessing"])) if "preprocessing" in meta else None,
            labels=json.loads(meta["labels"]) if "labels" in meta else None,
            extra=json.loads(meta.get("extra", "{}")),
            source="mbv3-mobile",
        )
    source = detect_source(state_dict)
    if source == "timm":
        state_dict = timm_to_torchvision(state_dict, bn_eps=timm_bn_eps)
    guessed = guess_config(state_dict)
    if guessed is None and source == "timm":
        raise CheckpointError(
            f"{path}: this timm checkpoint has no torchvision-layout counterpart (classifier.0 is "
            f"{tuple(state_dict.get('classifier.0.weight', torch.empty(0)).shape)}). Only timm's "
            "mobilenetv3_large_100 / mobilenetv3_small_100 (and tf_* minimal_100) map: its width != 1.0 "
            "models keep an unscaled 1280/1024 head that torchvision scales with the width."
        )
    target = _merge(guessed, requested)
    if target is None:
        raise CheckpointError(
            f"{path}: cannot infer the MobileNetV3 variant from its shapes; pass arch/width/num_classes "
            f"(first keys: {list(state_dict)[:_SHOW]})"
        )
    check_layout(state_dict, target, what=f"{path} ({source} layout)")
    model = build_model(target)
    model.load_state_dict(state_dict, strict=True)
    return Checkpoint(model=model.eval(), config=target, source=source)


def _requested(config, arch, width, num_classes) -> dict:
    req = config.to_dict() if config is not None else {}
    for name, value in (("arch", arch), ("width", width), ("num_classes", num_classes)):
        if value is not None:
            req[name] = value
    return req


def _merge(guessed: ModelConfig | None, requested: dict) -> ModelConfig | None:
    if guessed is None and not {"arch", "width", "num_classes"} <= set(requested):
        return None
    base = guessed.to_dict() if guessed is not None else {}
    return ModelConfig.from_dict({**base, **requested})


def _check_request(own: ModelConfig, requested: dict, path) -> None:
    clashes = [f"{k}: file has {own.to_dict()[k]!r}, asked for {v!r}" for k, v in requested.items() if k != "dropout" and own.to_dict()[k] != v]
    if clashes:
        raise CheckpointError(
            f"{path} is a checkpoint for {own.name} (num_classes={own.num_classes}), not the requested model: "
            + "; ".join(clashes)
        )


def save_checkpoint(
    path: str | os.PathLike,
    model: MobileNetV3,
    *,
    preprocessing: Preprocessing | None = None,
    labels: list[str] | None = None,
    extra: dict | None = None,
    weights_dtype: torch.dtype | None = None,
) -> Path:
    """Write weights + config + preprocessing + labels as one .safetensors file, atomically.
    `weights_dtype` (e.g. torch.float16) stores floating tensors in that type (half the bytes);
    loading casts them back to the model's float32."""
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"own checkpoints are .safetensors files; got {path.name}")
    if labels is not None and len(labels) != model.config.num_classes:
        raise ValueError(f"{len(labels)} labels for a model with num_classes={model.config.num_classes}")
    meta = {"format": FORMAT_TAG, "config": json.dumps(model.config.to_dict())}
    if preprocessing is not None:
        meta["preprocessing"] = json.dumps(preprocessing.to_dict())
    if labels is not None:
        meta["labels"] = json.dumps(list(labels))
    if extra:
        meta["extra"] = json.dumps(extra)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if weights_dtype is not None:
        tensors = {k: v.to(weights_dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        meta["weights_dtype"] = str(weights_dtype).removeprefix("torch.")
    with atomic_path(path) as tmp:
        tmp.write_bytes(_with_sorted_metadata(save(tensors, metadata=meta)))
    return path


def _with_sorted_metadata(data: bytes) -> bytes:
    """`data` (a .safetensors file) with its metadata entries in sorted order. safetensors writes
    them from a Rust HashMap, in an order that changes with every process: the same model would
    give new bytes on every save, and every cache key built on them would change. Same length:
    only the order of the entries changes (the header is compact JSON, padded with spaces)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    if not header.get("__metadata__"):
        return data
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > size:  # an escaping this module does not write itself; keep safetensors' bytes
        return data
    return data[:8] + text.ljust(size, b" ") + data[8 + size:]
