"""Core ML export (iOS): an app-ready `.mlpackage` classifier, compressed variants, a zipped package
for drop-in, and the ExecuTorch Core ML delegate `.pte`.

What `export_coreml` builds (coremltools 9.0, ML program, from `torch.export`):

- input ``image``: an ImageType (RGB, ``resolution`` x ``resolution``) with scale 1/255 and zero bias,
  so Core ML hands the program values in [0, 1]. The training normalisation ``(x - mean) / std`` is
  then done *per channel inside the graph* (a wrapped torch module), so it is exact for any
  per-channel std -- ImageType alone takes one scale for all channels (coremltools issue #64).
- outputs: ``classLabel`` (string) and ``classLabel_probs`` (label -> probability, a softmax in the
  graph), so Xcode's generated class is a classifier; plus ``logits`` (fp32 multiarray, pre-softmax)
  for parity checks.
- metadata: author, license, version, short description, input/output descriptions, and
  user-defined keys ``mbv3.*`` (preprocessing, model config, labels, precision, normalisation).

coremltools 9.0 cannot convert a torch model with a ClassifierConfig when the program has fp16 I/O
by default (iOS16+ with fp16 compute): ``get_func_output`` indexes the user output types with the
classify op's extra output and raises IndexError. Conversion therefore runs in two steps: torch ->
MIL program (``convert_to="milinternal"``, all the usual passes), then MIL program -> ML program
with the classifier (only dead-code elimination runs again). Weight compression
(`coremltools.optimize.coreml`'s passes) is applied to the MIL program between the two steps:
its public `linear_quantize_weights(mlmodel)` / `palettize_weights(mlmodel)` fail on a classifier
package (re-serialising the classify op's label list).

Saved packages are reproducible: Manifest.json item ids are derived from the item paths (only
coremltools' ``conversion_date`` metadata changes from one day to the next).

Nothing here imports another format's export code. Every writer is atomic: on any error nothing is
left at the target path.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .atomic import atomic_dir, atomic_path
from .errors import UserError
from .preprocess import Preprocessing

log = logging.getLogger(__name__)

# Deployment targets this module knows, oldest first. ML programs need iOS 15+.
TARGETS: tuple[str, ...] = ("iOS13", "iOS14", "iOS15", "iOS16", "iOS17", "iOS18")
MIN_MLPROGRAM_TARGET = "iOS15"
DEFAULT_TARGET = "iOS16"
PRECISIONS: tuple[str, ...] = ("fp16", "fp32")

INPUT_NAME = "image"
LABEL_OUTPUT = "classLabel"
PROBS_OUTPUT = "classLabel_probs"
LOGITS_OUTPUT = "logits"
_PROBS_VAR = "probs"  # the softmax var inside the program before the classify op takes it over


@dataclass(frozen=True)
class Compression:
    """A `coremltools.optimize.coreml` weight-compression recipe."""

    name: str
    kind: str  # "linear" | "palettize"
    options: dict
    min_target: str
    description: str


COMPRESSIONS: dict[str, Compression] = {
    c.name: c
    for c in (
        Compression(
            "int8", "linear", {"mode": "linear_symmetric", "dtype": "int8", "granularity": "per_channel"},
            "iOS16", "int8 linear symmetric weight quantization, one scale per output channel",
        ),
        Compression(
            "palette6", "palettize", {"nbits": 6, "mode": "kmeans", "granularity": "per_tensor"},
            "iOS16", "6-bit k-means palettization (64-entry look-up table per weight tensor)",
        ),
        Compression(
            "int4_block", "linear",
            {"mode": "linear_symmetric", "dtype": "int4", "granularity": "per_block", "block_size": 32},
            "iOS18", "int4 linear symmetric weight quantization, one scale per block of 32 input channels",
        ),
    )
}
DEFAULT_WEIGHT_THRESHOLD = 2048  # coremltools' default: smaller weight tensors stay uncompressed

# The variants a pipeline builds by default: name -> export_coreml keyword arguments.
DEFAULT_VARIANTS: dict[str, dict] = {
    "fp16": {"precision": "fp16"},
    "fp32": {"precision": "fp32"},
    "fp16_int8": {"precision": "fp16", "compression": "int8"},
    "fp16_palette6": {"precision": "fp16", "compression": "palette6"},
}


class CoreMLExportError(UserError, ValueError):
    """A Core ML export that cannot be done as asked; the message says why and how to fix it."""


# ---------------------------------------------------------------- validation helpers


def parse_target(target: Any) -> str:
    """'iOS16', 'ios16', '16', 16 or a `coremltools.target` member -> canonical 'iOS16'."""
    raw = getattr(target, "name", target)
    text = str(raw).strip()
    digits = text[3:] if text.lower().startswith("ios") else text
    name = f"iOS{digits}"
    if name not in TARGETS:
        raise CoreMLExportError(
            f"unknown Core ML deployment target {target!r}: use one of {', '.join(TARGETS[2:])} "
            f"(ML programs need {MIN_MLPROGRAM_TARGET} or newer)"
        )
    return name


def _target_index(name: str) -> int:
    return TARGETS.index(name)


def _ct_target(name: str):
    import coremltools as ct

    return getattr(ct.target, name)


def check_target(deployment_target: Any, compression: str | None = None) -> str:
    """Canonical target name, or CoreMLExportError if it is too old for ML programs or `compression`."""
    target = parse_target(deployment_target)
    if _target_index(target) < _target_index(MIN_MLPROGRAM_TARGET):
        raise CoreMLExportError(
            f"deployment target {target} is too old: Core ML ML programs (.mlpackage) need "
            f"{MIN_MLPROGRAM_TARGET}+; pass deployment_target='{DEFAULT_TARGET}' (the default)"
        )
    if compression is not None:
        scheme = COMPRESSIONS.get(compression)
        if scheme is None:
            raise CoreMLExportError(
                f"unknown compression {compression!r}: choose one of {', '.join(COMPRESSIONS)}"
            )
        if _target_index(target) < _target_index(scheme.min_target):
            usable = [n for n, c in COMPRESSIONS.items() if _target_index(c.min_target) <= _target_index(target)]
            raise CoreMLExportError(
                f"compression {compression!r} ({scheme.description}) needs deployment target "
                f"{scheme.min_target}+, but the model targets {target}: export with "
                f"deployment_target='{scheme.min_target}' or pick one of {', '.join(usable)}"
            )
    return target


def check_request(
    num_classes: int,
    labels: list[str] | tuple[str, ...] | None,
    *,
    precision: str = "fp16",
    deployment_target: Any = DEFAULT_TARGET,
    compression: str | None = None,
    preprocessing: Preprocessing | None = None,
) -> str:
    """Validate an export request before anything is built or written; returns the canonical target.

    Raises CoreMLExportError for: a label list whose length is not the head's `num_classes` (or with
    duplicates / empty names -- the classifier output is a dict keyed by label), an unknown precision,
    a deployment target too old for ML programs or for the requested compression, an unknown
    compression scheme, and preprocessing an ImageType cannot feed.
    """
    if precision not in PRECISIONS:
        raise CoreMLExportError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    target = check_target(deployment_target, compression)
    if labels is None:
        raise CoreMLExportError(
            "a Core ML classifier needs class labels; the checkpoint has none: pass labels=[...] "
            f"with {num_classes} names"
        )
    labels = list(labels)
    if len(labels) != num_classes:
        raise CoreMLExportError(
            f"{len(labels)} class labels given but the model's head has {num_classes} outputs "
            f"(classifier.3 is Linear(..., {num_classes})): pass exactly {num_classes} labels"
        )
    bad = [i for i, lab in enumerate(labels) if not isinstance(lab, str) or not lab]
    if bad:
        raise CoreMLExportError(f"class labels must be non-empty strings; bad entries at {bad[:5]}")
    dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dupes:
        raise CoreMLExportError(
            f"duplicate class labels {dupes[:5]}: the classifier's probability output is keyed by label"
        )
    if preprocessing is not None:
        if preprocessing.channel_order not in ("RGB", "BGR"):
            raise CoreMLExportError(
                f"channel order {preprocessing.channel_order!r} cannot be fed by a Core ML ImageType: use RGB or BGR"
            )
        if tuple(preprocessing.value_range) != (0.0, 1.0):
            raise CoreMLExportError(
                f"value_range {preprocessing.value_range} is not supported: the ImageType scales pixels "
                "to [0, 1] before the in-graph normalisation"
            )
    return target


# ---------------------------------------------------------------- the wrapped torch module


class AppClassifier(nn.Module):
    """What the .mlpackage computes: pixels in [0, 1] (N, 3, R, R) -> (softmax probs, logits).

    `(x - mean) / std` per channel happens here, inside the graph, so the Core ML ImageType only
    needs `scale = 1/255` (exact for any per-channel std). For a BGR image type the buffers are
    reversed to BGR order so channel c of the input is normalised with that channel's statistics.
    """

    def __init__(self, model: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.model = model
        mean, std = list(preprocessing.mean), list(preprocessing.std)
        if preprocessing.channel_order == "BGR":
            mean, std = mean[::-1], std[::-1]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model((x - self.mean) / self.std)
        return torch.softmax(logits, dim=1), logits


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
        f"{model_name} image classifier ({len(labels)} classes: {', '.join(labels[:4])}"
        f"{', ...' if len(labels) > 4 else ''}), {precision} ML program for {target}+"
        + (f", weights compressed: {COMPRESSIONS[compression].description}" if compression else "")
    )
    mlmodel.input_description[INPUT_NAME] = (
        f"{preprocessing.channel_order} image, {r}x{r}. Resize the whole picture to {r}x{r} "
        f"({preprocessing.resize}, no crop) as in training; the model scales pixels by 1/255 and "
        f"normalises per channel with mean={_fmt(preprocessing.mean)}, std={_fmt(preprocessing.std)} itself."
    )
    mlmodel.output_description[LABEL_OUTPUT] = "Most likely class label"
    mlmodel.output_description[PROBS_OUTPUT] = "Probability of each class label (softmax of the logits)"
    mlmodel.output_description[LOGITS_OUTPUT] = (
        "Raw class scores before softmax, in label order (for numeric parity checks)"
    )
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


# ---------------------------------------------------------------- export result


@dataclass
class CoreMLExport:
    """What an export/compression step produced (everything JSON-able via `to_dict`)."""

    path: Path
    precision: str
    deployment_target: str
    compression: str | None
    size_bytes: int
    seconds: float
    ops: dict[str, int]
    compressed_weights: int = 0
    source_map: dict[str, dict] = field(default_factory=dict, repr=False)

    def to_dict(self, *, with_source_map: bool = False) -> dict:
        data = asdict(self)
        data["path"] = str(self.path)
        if not with_source_map:
            data.pop("source_map")
        return data


def package_size(path: str | os.PathLike) -> int:
    """Bytes of a file, or of all files under a folder (an .mlpackage)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def program_op_counts(spec) -> dict[str, int]:
    """Histogram of MIL op types in a Core ML ML-program spec (main function), sorted by name."""
    func = spec.mlProgram.functions["main"]
    block = func.block_specializations[func.opset]
    return dict(sorted(Counter(op.type for op in block.operations).items()))


# ---------------------------------------------------------------- torch.export + op check


def _module_path(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "<top level>"
    path = list(stack.values())[-1][0]
    return path or "<top level>"


def _strip_wrapper(path: str) -> str:
    # AppClassifier holds the network as `.model`; report paths as the network's own module names.
    return path[len("model."):] if path.startswith("model.") else ("model" if path == "model" else path)


def export_program(module: nn.Module, resolution: int) -> torch.export.ExportedProgram:
    """torch.export the module on a (1, 3, R, R) example, decomposed the way coremltools wants."""
    example = torch.rand(1, 3, resolution, resolution)
    with torch.no_grad():
        ep = torch.export.export(module.eval(), (example,))
    return ep.run_decompositions({})


def check_convertible(ep: torch.export.ExportedProgram) -> None:
    """Raise CoreMLExportError naming every aten op coremltools has no converter for, and where.

    Uses coremltools' own op registry and name normalisation, so the check says exactly what
    `ct.convert` would fail on -- but before anything is converted or written.
    """
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY
    from coremltools.converters.mil.frontend.torch.utils import sanitize_op_kind

    missing: dict[str, list[str]] = {}
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        target = node.target
        try:
            kind = target.name()
        except Exception:  # noqa: BLE001 - python callables (getitem, ...) have no .name()
            kind = getattr(target, "__name__", str(target))
        if sanitize_op_kind(kind) not in _TORCH_OPS_REGISTRY:
            missing.setdefault(str(target), []).append(_strip_wrapper(_module_path(node)))
    if missing:
        parts = [
            f"{op} (in module {', '.join(sorted(set(mods))[:3])}{' ...' if len(set(mods)) > 3 else ''})"
            for op, mods in missing.items()
        ]
        raise CoreMLExportError(
            f"coremltools 9.0 cannot convert {len(missing)} op(s): {'; '.join(parts)}. Replace them "
            "with supported torch ops (or register a converter with "
            "coremltools.converters.mil.frontend.torch.register_torch_op); nothing was written."
        )


# ---------------------------------------------------------------- conversion


def _source_map(prog, ep: torch.export.ExportedProgram) -> dict[str, dict]:
    """MIL op output name -> {"op", "fx_node", "module", "stack"} for the later drift localisation.

    MIL var names come from torch.export node names (plus `_cast_fp16`-style suffixes); an op with
    no such name (e.g. the `thresholded_relu` / `sigmoid_hard` pieces of a hardswish) borrows the
    module of the nearest named op with the same source stack trace.
    """
    from coremltools.converters.mil.mil.scope import ScopeSource

    nodes = {n.name: n for n in ep.graph.nodes}
    # The two graph outputs were renamed by ct.convert's `outputs=`; map them back to their nodes.
    aliases = dict(zip((_PROBS_VAR, LOGITS_OUTPUT), ep.graph_signature.user_outputs))
    ops = [op for op in prog.functions["main"].operations if op.op_type != "const"]
    rows = []
    for op in ops:
        name = op.outputs[0].name
        base = name
        for suffix in ("_cast_fp16", "_cast_fp32", "_to_fp16", "_to_fp32", "_cast_to_fp32"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        base = aliases.get(base, base)
        scopes = getattr(op, "scopes", {}) or {}
        stack = scopes.get(ScopeSource.EXIR_STACK_TRACE, [None])
        stack = stack[0] if stack else None
        node = nodes.get(base)
        module = _strip_wrapper(_module_path(node)) if node is not None else None
        rows.append({"name": name, "op": op.op_type, "fx_node": base if node is not None else None,
                     "module": module, "stack": stack})
    for i, row in enumerate(rows):
        if row["module"] is not None or not row["stack"]:
            continue
        for dist in range(1, 4):
            for j in (i + dist, i - dist):
                if 0 <= j < len(rows) and rows[j]["module"] is not None and rows[j]["stack"] == row["stack"]:
                    row["module"] = rows[j]["module"]
                    break
            if row["module"] is not None:
                break
    out = {}
    for row in rows:
        stack = row.pop("stack")
        row["source"] = stack.strip().splitlines()[-1].strip() if stack else None
        out[row.pop("name")] = row
    return out


def convert_to_mlmodel(
    model: nn.Module,
    preprocessing: Preprocessing,
    labels: list[str] | tuple[str, ...] | None,
    *,
    precision: str = "fp16",
    deployment_target: Any = DEFAULT_TARGET,
    compression: str | None = None,
    weight_threshold: int = DEFAULT_WEIGHT_THRESHOLD,
    metadata: AppMetadata | None = None,
):
    """Convert in memory; returns (coremltools MLModel, source_map). Nothing is written.

    `model` is the bare network (normalised NCHW float in, logits out); it is put in eval mode.
    The Core ML model takes an RGB image and does the normalisation itself (see `AppClassifier`).
    """
    import coremltools as ct

    num_classes = getattr(getattr(model, "config", None), "num_classes", None)
    if num_classes is None:
        num_classes = _head_width(model, preprocessing.resolution)
    target = check_request(num_classes, labels, precision=precision, deployment_target=deployment_target,
                           compression=compression, preprocessing=preprocessing)
    labels = list(labels)
    wrapped = AppClassifier(model, preprocessing).eval()
    ep = export_program(wrapped, preprocessing.resolution)
    check_convertible(ep)
    r = preprocessing.resolution
    layout = ct.colorlayout.BGR if preprocessing.channel_order == "BGR" else ct.colorlayout.RGB
    image = ct.ImageType(name=INPUT_NAME, shape=(1, 3, r, r), scale=1.0 / 255.0, bias=[0.0, 0.0, 0.0],
                         color_layout=layout, channel_first=True)
    ct_prec = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            prog = ct.convert(
                ep,
                inputs=[image],
                outputs=[ct.TensorType(name=_PROBS_VAR, dtype=np.float32),
                         ct.TensorType(name=LOGITS_OUTPUT, dtype=np.float32)],
                convert_to="milinternal",
                minimum_deployment_target=_ct_target(target),
                compute_precision=ct_prec,
            )
            if compression is not None:
                _compress_program(prog, compression, weight_threshold)
            # Step two: the classifier (see the module docstring for why this is separate).
            prog.functions["main"].set_output_types(None)
            mlmodel = ct.convert(
                prog,
                convert_to="mlprogram",
                minimum_deployment_target=_ct_target(target),
                compute_precision=ct.precision.FLOAT32,  # no second fp16 pass: step one did it
                pass_pipeline=ct.PassPipeline(["common::dead_code_elimination"], pipeline_name="mbv3_cleanup"),
                classifier_config=ct.ClassifierConfig(labels, predicted_feature_name=LABEL_OUTPUT,
                                                      predicted_probabilities_output=_PROBS_VAR),
                skip_model_load=True,
            )
        except (NotImplementedError, ValueError) as exc:  # a rejection check_convertible could not foresee
            raise CoreMLExportError(
                f"coremltools 9.0 could not convert the model ({type(exc).__name__}: {exc}); nothing was written"
            ) from exc
    model_cfg = model.config.to_dict() if hasattr(model, "config") else {}
    _apply_metadata(mlmodel, model_name=getattr(getattr(model, "config", None), "name", type(model).__name__),
                    preprocessing=preprocessing, labels=labels, precision=precision, target=target,
                    model_config=model_cfg, meta=metadata or AppMetadata(),
                    compression=compression, weight_threshold=weight_threshold)
    return mlmodel, _source_map(prog, ep)


def _head_width(model: nn.Module, resolution: int) -> int:
    with torch.no_grad():
        return int(model.eval()(torch.zeros(1, 3, resolution, resolution)).shape[-1])


def _save_package(mlmodel, out_path: Path) -> None:
    """Save an MLModel to `out_path` (an .mlpackage folder) atomically, made reproducible:

    - coremltools names the package's items with random UUIDs in Manifest.json; they are replaced
      by UUIDs derived from each item's path (uuid5), so the same model gives the same bytes;
    - coremltools drops an `executorch_debug_handle_mapping.json` beside the manifest for programs
      from torch.export; with no ExecuTorch debug handles (none here) it maps every op to `null`
      and is ~100 KB of nothing an app needs, so it is removed.
    """
    if out_path.suffix != ".mlpackage":
        raise CoreMLExportError(f"a Core ML ML program is saved as a .mlpackage folder; got {out_path.name}")
    with atomic_dir(out_path) as tmp:
        staged = tmp / "model.mlpackage"
        mlmodel.save(str(staged))
        for child in staged.iterdir():
            os.replace(child, tmp / child.name)
        staged.rmdir()
        debug_map = tmp / "executorch_debug_handle_mapping.json"
        if debug_map.is_file() and set(json.loads(debug_map.read_text()).get("mapping", {})) <= {"null"}:
            debug_map.unlink()
        _canonical_manifest(tmp / "Manifest.json")


def _canonical_manifest(manifest: Path) -> None:
    import uuid

    data = json.loads(manifest.read_text())
    entries = data.get("itemInfoEntries", {})
    ids = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, f"mbv3-mobile.mlpackage/{entry.get('path', old)}"))
           for old, entry in entries.items()}
    data["itemInfoEntries"] = {ids[old]: entry for old, entry in sorted(entries.items(), key=lambda kv: ids[kv[0]])}
    if data.get("rootModelIdentifier") in ids:
        data["rootModelIdentifier"] = ids[data["rootModelIdentifier"]]
    manifest.write_text(json.dumps(data, indent=4) + "\n")


def export_coreml(
    model: nn.Module,
    preprocessing: Preprocessing,
    labels: list[str] | tuple[str, ...] | None,
    out_path: str | os.PathLike,
    *,
    precision: str = "fp16",
    deployment_target: Any = DEFAULT_TARGET,
    compression: str | None = None,
    weight_threshold: int = DEFAULT_WEIGHT_THRESHOLD,
    metadata: AppMetadata | None = None,
) -> CoreMLExport:
    """Build the app-ready classifier `.mlpackage` at `out_path` (atomically) and describe it.

    `precision` 'fp16' (default) or 'fp32'; `deployment_target` 'iOS15'..'iOS18' (default iOS16).
    `compression`: None, 'int8' (linear symmetric weights, one scale per output channel), 'palette6'
    (6-bit k-means look-up table per tensor) -- both iOS16+ -- or 'int4_block' (int4, one scale per
    32 input channels, iOS18+); weight tensors with fewer than `weight_threshold` elements stay as
    they are. The target decides the decompression ops (iOS16/17: constexpr_affine_dequantize,
    constexpr_lut_to_dense; iOS18: constexpr_blockwise_shift_scale, iOS18 constexpr_lut_to_dense).
    Raises CoreMLExportError (nothing written) for a label count that does not match the head,
    an op coremltools cannot convert (named, with its module), or a target too old (for ML
    programs or for the compression).
    """
    out_path = Path(out_path)
    if out_path.suffix != ".mlpackage":
        raise CoreMLExportError(f"a Core ML ML program is saved as a .mlpackage folder; got {out_path.name}")
    start = time.perf_counter()
    mlmodel, source_map = convert_to_mlmodel(model, preprocessing, labels, precision=precision,
                                             deployment_target=deployment_target, compression=compression,
                                             weight_threshold=weight_threshold, metadata=metadata)
    _save_package(mlmodel, out_path)
    seconds = time.perf_counter() - start
    ops = program_op_counts(mlmodel.get_spec())
    return CoreMLExport(
        path=out_path, precision=precision, deployment_target=parse_target(deployment_target),
        compression=compression, size_bytes=package_size(out_path), seconds=round(seconds, 3), ops=ops,
        compressed_weights=sum(n for op, n in ops.items() if op.startswith("constexpr_")),
        source_map=source_map,
    )


# ---------------------------------------------------------------- compression


def _compress_program(prog, scheme: str, weight_threshold: int) -> None:
    """Apply a `coremltools.optimize.coreml` weight-compression pass to a MIL program in place.

    Done on the program *before* the classify op is added: coremltools 9.0's public
    `linear_quantize_weights(mlmodel)` / `palettize_weights(mlmodel)` round-trip a classifier
    package through milproto and fail re-serialising the classify op's label list.
    """
    import coremltools.optimize.coreml as cto
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.converters.mil.mil.scope import ScopeInfo, ScopeSource

    recipe = COMPRESSIONS[scheme]
    if recipe.kind == "linear":
        op_cfg = cto.OpLinearQuantizerConfig(weight_threshold=weight_threshold, **recipe.options)
        graph_pass = PASS_REGISTRY["compression::linear_quantize_weights"]
    else:
        op_cfg = cto.OpPalettizerConfig(weight_threshold=weight_threshold, **recipe.options)
        graph_pass = PASS_REGISTRY["compression::palettize_weights"]
    graph_pass.set_options([PassOption("config", cto.OptimizationConfig(global_config=op_cfg)),
                            PassOption("joint_compression", False)])
    # The torch.export frontend marks stack-trace scopes as essential; give the new constexpr ops one.
    # coremltools logs one warning per weight a recipe skips (e.g. int4 blocks of 32 on a 24-channel
    # conv); those weights simply stay fp16, `CoreMLExport.compressed_weights` counts the others.
    ct_log = logging.getLogger("coremltools")
    level = ct_log.level
    ct_log.setLevel(logging.ERROR)
    try:
        with mb.scope(ScopeInfo(source=ScopeSource.EXIR_STACK_TRACE, data=[f"compression:{scheme}"]),
                      ScopeInfo(source=ScopeSource.EXIR_DEBUG_HANDLE, data=[None])):
            graph_pass.apply(prog)
    finally:
        ct_log.setLevel(level)


# ---------------------------------------------------------------- zip for drop-in


_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def zip_mlpackage(package_dir: str | os.PathLike, zip_path: str | os.PathLike) -> Path:
    """Zip an `.mlpackage` folder deterministically (atomically written).

    Entries are sorted, stored under the package's folder name (so unzipping yields
    `Name.mlpackage/...`), with a fixed 1980-01-01 timestamp, fixed permissions and DEFLATE level 9:
    the same package bytes always give the same zip bytes.
    """
    package_dir, zip_path = Path(package_dir), Path(zip_path)
    if not package_dir.is_dir() or package_dir.suffix != ".mlpackage":
        raise CoreMLExportError(f"{package_dir} is not an .mlpackage folder")
    root = package_dir.name
    entries = sorted(p for p in package_dir.rglob("*"))
    with atomic_path(zip_path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            for path in entries:
                rel = path.relative_to(package_dir).as_posix()
                if path.is_dir():
                    info = zipfile.ZipInfo(f"{root}/{rel}/", date_time=_ZIP_EPOCH)
                    info.external_attr = (0o40755 << 16) | 0x10
                    zf.writestr(info, b"")
                    continue
                info = zipfile.ZipInfo(f"{root}/{rel}", date_time=_ZIP_EPOCH)
                info.external_attr = 0o100644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3
                zf.writestr(info, path.read_bytes(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return zip_path


# ---------------------------------------------------------------- ExecuTorch Core ML delegate


def build_executorch_coreml(
    model: nn.Module,
    out_path: str | os.PathLike,
    *,
    resolution: int,
    precision: str = "fp16",
    deployment_target: Any = DEFAULT_TARGET,
) -> dict:
    """Lower the bare network (normalised NCHW float32 (1, 3, R, R) in, logits out) to an ExecuTorch
    `.pte` with the Core ML delegate, write it atomically, and report the delegation.

    Builds on Linux; running it needs an ExecuTorch runtime with CoreMLBackend (iOS/macOS) -- the
    pip runtime here registers no CoreMLBackend. Returns {"path", "size_bytes", "seconds",
    "delegated_nodes", "non_delegated_nodes", "delegate_subgraphs", "non_delegated_ops", ...}.
    """
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    if precision not in PRECISIONS:
        raise CoreMLExportError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    target = check_target(deployment_target)
    out_path = Path(out_path)
    start = time.perf_counter()
    example = torch.rand(1, 3, resolution, resolution)
    with torch.no_grad():
        ep = torch.export.export(model.eval(), (example,))
    check_convertible(ep.run_decompositions({}))
    specs = CoreMLBackend.generate_compile_specs(
        minimum_deployment_target=_ct_target(target),
        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edge = to_edge_transform_and_lower(ep, partitioner=[CoreMLPartitioner(compile_specs=specs)])
        info = get_delegation_info(edge.exported_program().graph_module)
        program = edge.to_executorch()
    with atomic_path(out_path) as tmp:
        Path(tmp).write_bytes(program.buffer)
    return {
        "path": str(out_path),
        "size_bytes": out_path.stat().st_size,
        "seconds": round(time.perf_counter() - start, 3),
        "precision": precision,
        "deployment_target": target,
        "delegate_subgraphs": info.num_delegated_subgraphs,
        "delegated_nodes": info.num_delegated_nodes,
        "non_delegated_nodes": info.num_non_delegated_nodes,
        "non_delegated_ops": {k: v.non_delegated for k, v in info.delegation_by_operator.items() if v.non_delegated},
        "runs_here": False,
        "note": "needs an ExecuTorch runtime with CoreMLBackend (iOS/macOS); the pip runtime has none",
    }


# ---------------------------------------------------------------- numerics: parity gates

# The gates (interpreter vs eager fp32 on the same pictures).
FP32_MAX_ABS_DLOGIT = 1e-4
FP32_MIN_TOP1_AGREEMENT = 1.0
FP16_MAX_ACCURACY_DROP_PT = 0.1


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
    from .mil_interpreter import load_program

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
    from .mil_interpreter import load_program

    program = load_program(package)
    feeds = {next(iter(program.image_inputs)): np.asarray(picture, dtype=np.float32)[:1]}
    captured = program.run(feeds, capture=True).intermediates
    return [(source_map.get(name, {}).get("module"), np.asarray(value, dtype=np.float32))
            for name, value in captured.items() if isinstance(value, np.ndarray)]


def parity_report(
    package: str | os.PathLike,
    pictures,
    reference_logits,
    true_labels=None,
    *,
    outputs: dict | None = None,
) -> dict:
    """Compare a package (through the numpy MIL interpreter) with eager fp32 on the same pictures.

    `pictures`: uint8 RGB (N, R, R, 3) (see `app_pictures`); `reference_logits`: eager fp32 logits
    on them (see `eager_logits`); `true_labels`: int class ids for accuracy. `outputs` may pass
    precomputed `interpreter_outputs`. Returns a JSON-able dict: images, top-1 agreement,
    max / mean |delta logit|, max |delta probability|, accuracies and drop (percentage points),
    whether classLabel matches the arg-max, and `gates` (see `evaluate_gates`).
    """
    info = package_info(package)
    out = outputs if outputs is not None else interpreter_outputs(package, pictures)
    ref = np.asarray(reference_logits, dtype=np.float32)
    got = out["logits"]
    if got.shape != ref.shape:
        raise CoreMLExportError(f"package logits {got.shape} vs reference {ref.shape}: different models or images?")
    ref_top, got_top = ref.argmax(1), got.argmax(1)
    diff = np.abs(got.astype(np.float64) - ref)
    ref_probs = np.exp(ref - ref.max(1, keepdims=True))
    ref_probs /= ref_probs.sum(1, keepdims=True)
    class_names = info["labels"] or out["class_order"]
    label_ok = [lab == class_names[i] for lab, i in zip(out["labels"], got_top)] if class_names else []
    report = {
        "package": str(package),
        "precision": info["precision"],
        "compression": info["compression"],
        "deployment_target": info["deployment_target"],
        "images": int(len(ref)),
        "top1_agreement": float((ref_top == got_top).mean()),
        "max_abs_dlogit": float(diff.max()),
        "mean_abs_dlogit": float(diff.mean()),
        "max_abs_dprob": float(np.abs(out["probs"] - ref_probs).max()) if out["probs"].size else None,
        "class_label_matches_argmax": bool(all(label_ok)) if label_ok else None,
    }
    if true_labels is not None:
        y = np.asarray(true_labels).reshape(-1)
        report["eager_top1"] = float((ref_top == y).mean())
        report["coreml_top1"] = float((got_top == y).mean())
        report["accuracy_drop_pt"] = round(100.0 * (report["eager_top1"] - report["coreml_top1"]), 6)
    report["gates"] = evaluate_gates(report)
    return report


def evaluate_package(package: str | os.PathLike, model: nn.Module, preprocessing: Preprocessing, images,
                     true_labels=None) -> dict:
    """One call for a pipeline stage: dataset images (uint8 (N, 1|3, H, W)) -> `app_pictures` at the
    training resolution -> eager fp32 logits and the package through the MIL interpreter ->
    `parity_report` (with gates)."""
    pictures = app_pictures(images, preprocessing.resolution)
    return parity_report(package, pictures, eager_logits(model, preprocessing, pictures), true_labels)


def evaluate_gates(report: dict) -> dict:
    """The issue's gates for one parity report: fp32 programs must agree on top-1 for every image
    with max |delta logit| <= 1e-4; fp16 programs may lose at most 0.1 accuracy points;
    compressed variants are reported, not gated. Returns {"checked": [...], "passed": bool}."""
    checks = []
    if report.get("compression"):
        return {"checked": [], "passed": True, "note": "compressed variant: figures reported, not gated"}
    if report.get("precision") == "fp32":
        checks.append({"name": "top1_agreement", "value": report["top1_agreement"], "limit": FP32_MIN_TOP1_AGREEMENT,
                       "passed": report["top1_agreement"] >= FP32_MIN_TOP1_AGREEMENT})
        checks.append({"name": "max_abs_dlogit", "value": report["max_abs_dlogit"], "limit": FP32_MAX_ABS_DLOGIT,
                       "passed": report["max_abs_dlogit"] <= FP32_MAX_ABS_DLOGIT})
    elif report.get("precision") == "fp16" and "accuracy_drop_pt" in report:
        checks.append({"name": "accuracy_drop_pt", "value": report["accuracy_drop_pt"], "limit": FP16_MAX_ACCURACY_DROP_PT,
                       "passed": report["accuracy_drop_pt"] <= FP16_MAX_ACCURACY_DROP_PT})
    if report.get("class_label_matches_argmax") is False:
        checks.append({"name": "class_label_matches_argmax", "value": False, "limit": True, "passed": False})
    return {"checked": checks, "passed": all(c["passed"] for c in checks)}


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
