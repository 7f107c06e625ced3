"""Core ML numerics on any host: the package's program through the numpy MIL interpreter (Core
ML predicts only on macOS), on the same pictures eager PyTorch sees; `coreml_predict` is the real
runtime, macOS only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mbv3_mobile.data.preprocess import Preprocessing, check_model_input
from mbv3_mobile.export.coreml.convert import INPUT_NAME, LABEL_OUTPUT, LOGITS_OUTPUT, PROBS_OUTPUT, CoreMLExportError


def app_pictures(images, resolution: int):
    """Dataset images, uint8 (N, C, H, W) with C = 1 or 3, -> uint8 RGB pictures (N, R, R, 3).

    Resized like training's BatchTransform (bilinear, half-pixel centres, antialias when shrinking),
    gray replicated to RGB, then rounded to 8 bits: what an app would hand the model after resizing
    a decoded picture. Both the Core ML path and the eager reference start from these same bytes.
    """
    import torch.nn.functional as F

    x = torch.as_tensor(np.asarray(images)).float()
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise CoreMLExportError(f"images must be uint8 (N, 1|3, H, W); got {tuple(x.shape)}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > resolution)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def eager_logits(model: nn.Module, preprocessing: Preprocessing, pictures, *, batch_size: int = 500):
    """Eager fp32 logits for uint8 RGB pictures (N, R, R, 3): x / 255, then (x - mean) / std."""
    model = model.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(pictures), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(pictures[start:start + batch_size]))
            x = chunk.permute(0, 3, 1, 2).float() / 255.0
            outs.append(model(preprocessing.normalize(x)).float().numpy())
    return np.concatenate(outs)


def package_info(package: str | os.PathLike) -> dict:
    """precision / compression / target / labels / preprocessing recorded in a package's metadata."""
    import coremltools as ct

    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    ud = dict(spec.description.metadata.userDefined)
    return {
        "precision": ud.get("mbv3.precision"),
        "compression": json.loads(ud["mbv3.compression"])["scheme"] if "mbv3.compression" in ud else None,
        "deployment_target": ud.get("mbv3.deployment_target"),
        "labels": json.loads(ud["mbv3.labels"]) if "mbv3.labels" in ud else None,
        "preprocessing": json.loads(ud["mbv3.preprocessing"]) if "mbv3.preprocessing" in ud else None,
        "spec_version": int(spec.specificationVersion),
    }


def interpreter_outputs(package: str | os.PathLike, pictures, *, batch_size: int | None = None) -> dict:
    """Run uint8 RGB pictures (N, R, R, 3) through the package's ImageType input with the numpy MIL
    interpreter: {"logits": (N, C) float32, "probs": (N, C) from classLabel_probs, "labels": [...]}."""
    from mbv3_mobile.verify.mil_interpreter import load_program

    program = load_program(package)
    out = program.predict_images(pictures, batch_size=batch_size)
    labels = list(out[LABEL_OUTPUT])
    order = list(out[PROBS_OUTPUT][0].keys()) if out[PROBS_OUTPUT] else []
    probs = np.array([[row[k] for k in order] for row in out[PROBS_OUTPUT]], dtype=np.float32)
    return {"logits": np.asarray(out[LOGITS_OUTPUT], dtype=np.float32), "probs": probs, "labels": labels,
            "class_order": order}


def module_outputs(package: str | os.PathLike, picture, source_map: dict) -> list[tuple[str | None, np.ndarray]]:
    """Per-op outputs of the package's program for one picture, for drift localisation:
    (nn.Module path, value) in program order, through the numpy MIL interpreter (Core ML itself
    exposes no intermediates) and the converter's source map (`CoreMLExport.source_map`).
    `picture`: the ImageType feed, float or uint8 RGB (1, 3, R, R) in 0..255."""
    from mbv3_mobile.verify.mil_interpreter import load_program

    program = load_program(package)
    feeds = {next(iter(program.image_inputs)): np.asarray(picture, dtype=np.float32)[:1]}
    captured = program.run(feeds, capture=True).intermediates
    return [(source_map.get(name, {}).get("module"), np.asarray(value, dtype=np.float32))
            for name, value in captured.items() if isinstance(value, np.ndarray)]



# ---------------------------------------------------------------- macOS: the real Core ML runtime


def coreml_predict(package: str | os.PathLike, pictures, *, compute_units: str = "CPU_ONLY") -> dict:
    """Core ML's own `MLModel.predict` on uint8 RGB pictures (N, R, R, 3), one picture per call
    (macOS only). Returns {"logits": (N, C) float32, "labels": [...]}; compare with
    `interpreter_outputs` on the same pictures."""
    import sys

    if sys.platform != "darwin":
        raise CoreMLExportError(f"Core ML predict needs macOS (this is {sys.platform}); use interpreter_outputs here")
    import coremltools as ct
    from PIL import Image

    model = ct.models.MLModel(str(package), compute_units=getattr(ct.ComputeUnit, compute_units))
    logits, labels = [], []
    for pic in np.asarray(pictures):
        out = model.predict({INPUT_NAME: Image.fromarray(np.ascontiguousarray(pic))})
        logits.append(np.asarray(out[LOGITS_OUTPUT], dtype=np.float32).reshape(-1))
        labels.append(out[LABEL_OUTPUT])
    return {"logits": np.stack(logits), "labels": labels}



def float_pictures(images: torch.Tensor, pre: Preprocessing) -> np.ndarray:
    """Normalised NCHW images back to the 0..255 float RGB tensor an ImageType input receives,
    unrounded, so the program sees exactly what eager saw."""
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    return ((images * std + mean) * 255.0).numpy().astype(np.float32)


def run_package(package: Path, images: torch.Tensor, pre: Preprocessing, *, batch: int = 500) -> torch.Tensor:
    """Logits of the package's program (MIL reference interpreter) for normalised images."""
    from mbv3_mobile.verify.mil_interpreter import load_program

    check_model_input(images, (1, 3, pre.resolution, pre.resolution), "this Core ML package")
    program = load_program(package)
    name = next(iter(program.image_inputs))
    feeds = float_pictures(images, pre)
    outs = [program.run({name: feeds[i : i + batch]}).outputs[LOGITS_OUTPUT] for i in range(0, len(feeds), batch)]
    return torch.from_numpy(np.concatenate(outs).astype(np.float32))
