"""ONNX: dynamo export (opset 18) -> onnx.checker (full) -> onnxsim -> onnxruntime, plus ONNX
Runtime static QDQ int8 as a comparison point.

Opset 18 because the dynamo exporter produces 18 whatever is asked; a requested 17 fails in its
down-conversion (seen with torch 2.13 / onnxscript 0.7.2).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path
from .errors import UserError
from .preprocess import check_model_input

OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


class OnnxExportError(UserError):
    """Export, check, simplification or runtime verification failed."""


def export_onnx(model: torch.nn.Module, resolution: int, path: str | os.PathLike, *, dynamic_batch: bool = False) -> Path:
    """Export `model` (eval) for a (N, 3, R, R) float input named 'image' to `path`, atomically."""
    import onnx

    model = model.eval()
    example = (torch.zeros(1, 3, resolution, resolution),)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), torch.no_grad():
            program = torch.onnx.export(
                model, example, dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=dynamic_shapes, optimize=True, verbose=False,
            )
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; report the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxExportError(f"torch.onnx.export (dynamo, opset {OPSET}) failed: {first[:300]}") from None
    proto = program.model_proto
    _check(proto)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    return Path(path)


def _check(proto) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise OnnxExportError(f"onnx.checker rejected the exported model: {str(exc).splitlines()[0]}") from None


def simplify_onnx(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """onnxsim, then the full checker again; returns node counts before/after."""
    import onnx
    import onnxsim

    model = onnx.load(str(src))
    before = len(model.graph.node)
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise OnnxExportError("onnxsim could not validate the simplified model against the original")
    _check(simplified)
    with atomic_path(dst) as tmp:
        onnx.save_model(simplified, str(tmp))
    return {"nodes_before": before, "nodes_after": len(simplified.graph.node), "opset": OPSET,
            "op_types": sorted({n.op_type for n in simplified.graph.node})}


def ort_session(path: str | os.PathLike, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(path_or_session, images: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Logits for normalised images (N, 3, R, R); batches when the model's batch dim is dynamic."""
    sess = ort_session(path_or_session) if isinstance(path_or_session, (str, os.PathLike)) else path_or_session
    inp = sess.get_inputs()[0]
    check_model_input(images, tuple(inp.shape), "this ONNX model")
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    step = fixed or batch_size
    outs = []
    for i in range(0, len(images), step):
        chunk = images[i : i + step].numpy().astype(np.float32)
        if fixed and len(chunk) != fixed:
            outs.extend(sess.run(None, {inp.name: chunk[j : j + 1]})[0] for j in range(len(chunk)))
            continue
        outs.append(sess.run(None, {inp.name: chunk})[0])
    return torch.from_numpy(np.concatenate(outs)).float()


def quantize_onnx_int8(src: str | os.PathLike, dst: str | os.PathLike, calibration: torch.Tensor) -> dict:
    """ONNX Runtime static QDQ int8: per-channel symmetric QInt8 weights, QUInt8 activations
    (QInt8 activations ran ~2.4x slower on this CPU), calibrated on real images; after
    `quant_pre_process` (shape inference + graph optimisation) as ORT recommends."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calibration.split(1))

        def get_next(self):
            batch = next(self.it, None)
            return None if batch is None else {INPUT_NAME: batch.numpy().astype(np.float32)}

    with tempfile.TemporaryDirectory() as tmpdir:
        pre = Path(tmpdir) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        with atomic_path(dst) as tmp:
            quantize_static(
                str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            )
    return {"calibration_images": int(len(calibration)), "format": "QDQ", "weights": "QInt8 per-channel symmetric",
            "activations": "QUInt8 asymmetric"}


def intermediate_outputs(path: str | os.PathLike, image: torch.Tensor) -> dict[str, np.ndarray]:
    """Every node output for one input, by exposing all value names as graph outputs (ORT has no
    tap API); keys are ONNX value names. Used to localise drift."""
    import onnx

    model = onnx.load(str(path))
    known = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for out in node.output:
            if out and out not in known:
                model.graph.output.append(onnx.ValueInfoProto(name=out))
                known.add(out)
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(names, {sess.get_inputs()[0].name: image.numpy().astype(np.float32)})
    return dict(zip(names, values))


def module_scopes(path: str | os.PathLike) -> dict[str, list[str]]:
    """ONNX value name -> nn.Module scopes, from the dynamo exporter's `pkg.torch.onnx.name_scopes`
    node metadata (present in the raw export; onnxsim drops metadata but keeps value names)."""
    import ast

    import onnx

    scopes: dict[str, list[str]] = {}
    for node in onnx.load(str(path)).graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        if "pkg.torch.onnx.name_scopes" not in meta:
            continue
        names = [s for s in ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])[:-1] if s]  # last entry: the op
        for out in node.output:
            scopes[out] = names
    return scopes


def module_outputs(path: str | os.PathLike, image: torch.Tensor, scopes: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """{module path: output} for one image: each module's output is the last node (graph order)
    inside its scope."""
    import onnx

    from .drift import outputs_by_module

    values = intermediate_outputs(path, image[:1])
    ordered = [(scopes[name][-1], values[name]) for node in onnx.load(str(path)).graph.node
               for name in node.output if scopes.get(name) and name in values]
    return outputs_by_module(ordered)
