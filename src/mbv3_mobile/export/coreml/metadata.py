"""The human-readable metadata Xcode shows for a package, and the mbv3.* keys tools read back."""

from __future__ import annotations

import json
from dataclasses import dataclass

from mbv3_mobile.data.preprocess import Preprocessing
from mbv3_mobile.export.coreml.names import INPUT_NAME, LABEL_OUTPUT, LOGITS_OUTPUT, PROBS_OUTPUT
from mbv3_mobile.export.coreml.recipes import COMPRESSIONS

# ---------------------------------------------------------------- metadata


@dataclass(frozen=True)
class AppMetadata:
    """The human-readable metadata Xcode shows for a model."""

    author: str = "mbv3-mobile"
    license: str = "MIT"
    version: str = ""  # empty: the mbv3-mobile package version
    short_description: str = ""  # empty: generated from the model config and labels


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("mbv3-mobile")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "0.0.0"


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _apply_metadata(mlmodel, *, model_name: str, preprocessing: Preprocessing, labels: list[str],
                    precision: str, target: str, model_config: dict, meta: AppMetadata,
                    compression: str | None, weight_threshold: int) -> None:
    r = preprocessing.resolution
    mlmodel.author = meta.author
    mlmodel.license = meta.license
    mlmodel.version = meta.version or _package_version()
    mlmodel.short_description = meta.short_description or (
        f"{model_name} {'image classifier' if 'classLabel' in {o.name for o in mlmodel.get_spec().description.output} else 'semantic segmentation'} ({len(labels)} classes: {', '.join(labels[:4])}"
        f"{', ...' if len(labels) > 4 else ''}), {precision} ML program for {target}+"
        + (f", weights compressed: {COMPRESSIONS[compression].description}" if compression else "")
    )
    mlmodel.input_description[INPUT_NAME] = (
        f"{preprocessing.channel_order} image, {r}x{r}. "
        + (f"Resize the shorter side to {preprocessing.resize_shorter} px, then crop the centre {r}x{r} "
           if preprocessing.resize_shorter else f"Resize the whole picture to {r}x{r} (no crop) ")
        + f"({preprocessing.interpolation}), as in training; the model scales pixels by 1/255 and "
        f"normalises per channel with mean={_fmt(preprocessing.mean)}, std={_fmt(preprocessing.std)} itself."
    )
    outputs = {o.name for o in mlmodel.get_spec().description.output}
    if LABEL_OUTPUT in outputs:
        mlmodel.output_description[LABEL_OUTPUT] = "Most likely class label"
        mlmodel.output_description[PROBS_OUTPUT] = "Probability of each class label (softmax of the logits)"
        mlmodel.output_description[LOGITS_OUTPUT] = (
            "Raw class scores before softmax, in label order (for numeric parity checks)"
        )
    else:  # a dense-output model (segmentation)
        mlmodel.output_description[LOGITS_OUTPUT] = (
            f"Class scores per pixel, 1 x {len(labels)} x {r} x {r} (MultiArray, labels in mbv3.labels order); "
            "the label map is their argmax over the classes")
    ud = mlmodel.user_defined_metadata
    ud["mbv3.preprocessing"] = json.dumps(preprocessing.to_dict())
    ud["mbv3.normalization"] = (
        "ImageType scale 1/255, bias 0; then (x - mean) / std per channel inside the program"
    )
    ud["mbv3.model"] = json.dumps(model_config)
    ud["mbv3.labels"] = json.dumps(labels)
    ud["mbv3.precision"] = precision
    ud["mbv3.deployment_target"] = target
    if compression is not None:
        recipe = COMPRESSIONS[compression]
        ud["mbv3.compression"] = json.dumps({"scheme": compression, "description": recipe.description,
                                             "weight_threshold": weight_threshold, **recipe.options})


