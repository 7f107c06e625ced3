"""ONNX: dynamo export (opset 18) -> onnx.checker (full) -> onnxsim -> onnxruntime, plus ONNX
Runtime static int8 (QDQ by default). The mobile side (EP-friendly graph, EP coverage, ORT format)
is `mobile.py`.

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

from mbv3_mobile.core.atomic import atomic_path
from mbv3_mobile.core.errors import UserError

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


INT8_FORMATS = ("qdq", "qoperator")
# Activation range calibration: the 99.999th percentile was chosen by measurement (docs/onnx.md).
INT8_CALIBRATIONS = ("percentile", "minmax", "entropy")
PERCENTILE = 99.999


# ORT's calibrators keep every tensor of every picture they are given before building histograms
# (LR-ASPP Large at 512 px: ~300 MB a picture; 80 pictures were killed at 24 GB). quantize_static
# calibrates in strides when asked (the histograms merge across strides), so a stride holds at most
# this much: memory grows with the model, not with the number of calibration pictures.
CALIBRATION_BYTES = 2 << 30
ACTIVATIONS_PER_INPUT = 128  # a MobileNetV3's tensors, all layers together, in input sizes (measured: ~100)


def calibration_stride(calibration: torch.Tensor) -> int:
    """Pictures per ORT calibration pass: the most that fit CALIBRATION_BYTES, as a divisor of the
    count (ORT requires one); all of them, in one pass, when they fit."""
    n = len(calibration)
    per_picture = calibration[:1].numel() * 4 * ACTIVATIONS_PER_INPUT
    most = max(1, min(n, CALIBRATION_BYTES // max(per_picture, 1)))
    return max(d for d in range(1, most + 1) if n % d == 0)


def quantize_onnx_int8(src: str | os.PathLike, dst: str | os.PathLike, calibration: torch.Tensor, *,
                       quant_format: str = "qdq", per_channel: bool = True, calibration_method: str = "percentile",
                       reduce_range: bool = True) -> dict:
    """ONNX Runtime static int8: symmetric QInt8 weights (per channel or per tensor), QUInt8
    activations (QInt8 activations ran ~2.4x slower on this CPU, and NNAPI takes uint8 ones),
    calibrated on real images; after `quant_pre_process` (shape inference + graph optimisation) as
    ORT recommends. `quant_format`: "qdq" (QuantizeLinear/DequantizeLinear around float ops: what
    ORT Mobile's EPs (NNAPI, XNNPACK) and the CPU EP fuse) or "qoperator" (QLinearConv & co.,
    com.microsoft QLinearMul / QGemm / QLinearGlobalAveragePool, which NNAPI lacks).

    `reduce_range` (ORT's own option) keeps the weights in 7 bits, [-64, 63]: ORT's u8s8 kernels on
    x86 CPUs without VNNI (AVX2 only) add pairs of u8 x s8 products in 16 bits, which saturate with
    full-range weights, so the same file computes differently by host CPU (measured on the CI model,
    Zen 3: SNR 29.3 dB in ORT's reference QDQ arithmetic, 18.5 dB in its fused kernels; 7-bit weights:
    28.5 dB in both; docs/onnx.md). Arm and VNNI kernels do not saturate; full range is for them only."""
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        """One picture at a time; `set_range` is ORT's hook for calibrating in strides."""

        def __init__(self) -> None:
            self.set_range(0, len(calibration))

        def __len__(self) -> int:
            return len(calibration)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.it = iter(calibration[start_index:end_index].split(1))

        def get_next(self):
            batch = next(self.it, None)
            return None if batch is None else {INPUT_NAME: batch.numpy().astype(np.float32)}

    fmt = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}[quant_format]
    with tempfile.TemporaryDirectory() as tmpdir:
        pre = Path(tmpdir) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        with atomic_path(dst) as tmp:
            quantize_static(
                str(pre), str(tmp), Reader(), quant_format=fmt, per_channel=per_channel, reduce_range=reduce_range,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method={"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax,
                                  "entropy": CalibrationMethod.Entropy}[calibration_method],
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                               "CalibStridedMinMax": calibration_stride(calibration),
                               **({"CalibPercentile": PERCENTILE} if calibration_method == "percentile" else {})},
            )
    return {"calibration_images": int(len(calibration)), "format": {"qdq": "QDQ", "qoperator": "QOperator"}[quant_format],
            "weights": f"QInt8 {'per-channel' if per_channel else 'per-tensor'} symmetric"
                       + (", 7-bit range [-64, 63]" if reduce_range else ", full range"),
            "activations": "QUInt8 asymmetric",
            "activation_ranges": f"{calibration_method}" + (f" {PERCENTILE}" if calibration_method == "percentile" else "")}
