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
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mbv3_mobile.core.atomic import atomic_dir
from mbv3_mobile.core.errors import UserError
from mbv3_mobile.data.preprocess import Preprocessing
from mbv3_mobile.export.coreml.metadata import AppMetadata, _apply_metadata
from mbv3_mobile.export.coreml.names import _PROBS_VAR, INPUT_NAME, LABEL_OUTPUT, LOGITS_OUTPUT, PROBS_OUTPUT  # noqa: F401 - re-exported
from mbv3_mobile.export.coreml.recipes import COMPRESSIONS, DEFAULT_WEIGHT_THRESHOLD, Compression  # noqa: F401 - re-exported
from mbv3_mobile.graph import export_program as torch_export_program
from mbv3_mobile.graph import module_path

log = logging.getLogger(__name__)

# Deployment targets this module knows, oldest first. ML programs need iOS 15+.
TARGETS: tuple[str, ...] = ("iOS13", "iOS14", "iOS15", "iOS16", "iOS17", "iOS18")
MIN_MLPROGRAM_TARGET = "iOS15"
DEFAULT_TARGET = "iOS16"
PRECISIONS: tuple[str, ...] = ("fp16", "fp32")



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


class AppDenseModel(AppClassifier):
    """A dense-output model (segmentation): pixels in [0, 1] -> logits N x C x R x R, as a MultiArray
    (Vision hands it back as a VNCoreMLFeatureValueObservation); no classifier op, no softmax: the
    app's label map is the argmax, which softmax does not change."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


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


def _strip_wrapper(path: str) -> str:
    # AppClassifier holds the network as `.model`; report paths as the network's own module names.
    return path[len("model."):] if path.startswith("model.") else ("model" if path == "model" else path)


def export_program(module: nn.Module, resolution: int) -> torch.export.ExportedProgram:
    """torch.export the module on a (1, 3, R, R) example, decomposed the way coremltools wants."""
    example = torch.rand(1, 3, resolution, resolution)
    with torch.no_grad():
        ep = torch_export_program(module.eval(), example)
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
            missing.setdefault(str(target), []).append(_strip_wrapper(module_path(node) or "<top level>"))
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
        module = _strip_wrapper(module_path(node) or "<top level>") if node is not None else None
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
    classifier: bool = True,
):
    """Convert in memory; returns (coremltools MLModel, source_map). Nothing is written.
    `classifier=False`: a dense-output model (segmentation), logits only (`AppDenseModel`).

    `model` is the bare network (normalised NCHW float in, logits out); it is put in eval mode.
    The Core ML model takes an RGB image and does the normalisation itself (see `AppClassifier`).
    """
    import coremltools as ct

    num_classes = getattr(getattr(model, "config", None), "num_classes", None)
    if num_classes is None:
        num_classes = _head_width(model, preprocessing.resolution) if classifier else 0
    target = check_request(num_classes, labels, precision=precision, deployment_target=deployment_target,
                           compression=compression, preprocessing=preprocessing)
    labels = list(labels)
    wrapped = (AppClassifier if classifier else AppDenseModel)(model, preprocessing).eval()
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
                         ct.TensorType(name=LOGITS_OUTPUT, dtype=np.float32)] if classifier else
                        [ct.TensorType(name=LOGITS_OUTPUT, dtype=np.float32)],
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
                                                      predicted_probabilities_output=_PROBS_VAR) if classifier else None,
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
    classifier: bool = True,
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
                                             weight_threshold=weight_threshold, metadata=metadata,
                                             classifier=classifier)
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
