"""A numpy reference interpreter for the MIL program inside a Core ML `.mlpackage`.

Core ML's own `predict` runs only on macOS. This module reads the package back on any OS
(`coremltools.models.MLModel(path, skip_model_load=True).get_spec()`), walks the ML program's
protobuf directly (main function, its opset's block) and executes each op with numpy, so a
Linux CI can check what the package computes.

- Dtypes are honoured as the program states them: every op's output is converted to its declared
  dtype, so an fp16 program rounds each op's result to float16 (arithmetic is done in float32 on
  float16 operands, then rounded -- the correctly rounded fp16 result of that op), and `cast` ops
  switch precision where the program says. fp32 programs compute in float32.
- Constants, including the compression ops (`constexpr_affine_dequantize`, both iOS16 and iOS18
  forms of `constexpr_lut_to_dense`, `constexpr_blockwise_shift_scale`), are decoded once at load
  time; the decompression arithmetic is implemented here, independently of coremltools (only the
  weight-blob reader and the protobuf value decoder are borrowed from it).
- Image inputs: Core ML turns the picture into a float tensor of 0..255 values in the input's
  colour space (RGB or BGR channel order, or one gray channel); the ImageType's scale and bias are
  ops inside an ML program (coremltools inserts them), so they run as part of the program.
  `image_feed` builds that tensor from uint8 pictures and `image_preprocessing` reads the
  scale/bias back out of the program.
- Every op's declared output shape and dtype is checked against what it computed; an op the
  interpreter does not know raises `UnsupportedOpError` naming it before anything runs. Nothing is
  skipped silently.
- `run(..., capture=True)` returns every op's output keyed by its MIL name (names come from the
  torch.export node names; `export_coreml` also returns a name -> nn.Module path map).
- Batches: the programs here have a static batch of 1; `run` accepts a leading batch axis of N on
  the inputs and treats axis 0 as the batch axis throughout (reshape targets' leading 1 becomes N;
  ops that would mix samples -- a reduction or softmax over axis 0 -- are rejected in batch mode).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mbv3_mobile.core.errors import UserError


class MILInterpreterError(UserError):
    """The program cannot be read or executed as asked; the message says what and where."""


class UnsupportedOpError(MILInterpreterError):
    """The program holds an op type this interpreter does not implement."""


# MIL proto DataType enum values -> names / numpy dtypes (coremltools.proto.MIL_pb2.DataType).
_DT_NAMES = {
    1: "bool", 2: "string", 10: "fp16", 11: "fp32", 12: "fp64", 13: "bf16", 21: "int8", 22: "int16",
    23: "int32", 24: "int64", 25: "int4", 31: "uint8", 32: "uint16", 33: "uint32", 34: "uint64",
    35: "uint4", 36: "uint2", 37: "uint1", 38: "uint6", 39: "uint3",
}
_NP_DTYPES = {
    "bool": np.bool_, "fp16": np.float16, "fp32": np.float32, "fp64": np.float64, "int8": np.int8,
    "int16": np.int16, "int32": np.int32, "int64": np.int64, "uint8": np.uint8, "uint16": np.uint16,
    "uint32": np.uint32, "uint64": np.uint64,
    # sub-byte integers are held unpacked, one per byte
    "int4": np.int8, "uint1": np.uint8, "uint2": np.uint8, "uint3": np.uint8, "uint4": np.uint8, "uint6": np.uint8,
}
_FLOATS = ("fp16", "fp32", "fp64")
_COLOR_SPACES = {10: "GRAYSCALE", 20: "RGB", 30: "BGR", 40: "GRAYSCALE_FLOAT16"}


@dataclass(frozen=True)
class TensorSpec:
    """A declared value: name, dtype name ('fp16', 'fp32', 'int32', 'string', ...), static shape.

    `kind` is 'tensor', 'list' or 'dict' (the classify op's outputs are a string and a dict)."""

    name: str
    dtype: str
    shape: tuple[int, ...] | None
    kind: str = "tensor"


@dataclass(frozen=True)
class ImageInput:
    """A Core ML image input: colour space ('RGB', 'BGR', 'GRAYSCALE', ...) and size."""

    name: str
    color_space: str
    width: int
    height: int

    @property
    def channels(self) -> int:
        return 3 if self.color_space in ("RGB", "BGR") else 1


@dataclass
class Op:
    """One MIL operation. `args` maps a parameter name to ('var', name) or ('value', decoded value),
    or a list of those for variadic parameters. `name` is the op's (first) output name."""

    index: int
    type: str
    args: dict[str, Any]
    outputs: list[TensorSpec]

    @property
    def name(self) -> str:
        return self.outputs[0].name


@dataclass
class RunResult:
    """Program outputs by name, and (if captured) each executed op's outputs by name, in order."""

    outputs: dict[str, Any]
    intermediates: dict[str, np.ndarray] = field(default_factory=dict)


# ---------------------------------------------------------------- proto decoding


def _tensor_spec(named_value) -> TensorSpec:
    vtype = named_value.type
    which = vtype.WhichOneof("type")
    if which == "tensorType":
        tt = vtype.tensorType
        dims = []
        for d in tt.dimensions:
            if d.WhichOneof("dimension") != "constant":
                dims = None
                break
            dims.append(int(d.constant.size))
        return TensorSpec(named_value.name, _DT_NAMES.get(tt.dataType, f"dtype{tt.dataType}"),
                          None if dims is None else tuple(dims))
    if which == "dictionaryType":
        return TensorSpec(named_value.name, "dict", None, kind="dict")
    if which == "listType":
        return TensorSpec(named_value.name, "list", None, kind="list")
    raise MILInterpreterError(f"value {named_value.name!r} has unsupported type {which!r}")


class _ValueDecoder:
    """Decodes proto Values (immediate or weight-blob) to numpy with coremltools' own reader."""

    def __init__(self, weights_dir: str | None) -> None:
        from coremltools.converters.mil.frontend.milproto.load import TranscriptionContext

        self.context = TranscriptionContext(weights_dir or "")

    def __call__(self, value_spec) -> Any:
        from coremltools.converters.mil.frontend.milproto.load import _load_value

        which = value_spec.type.WhichOneof("type")
        if which == "listType":  # classify's label list
            items = [self(v) for v in value_spec.immediateValue.list.values]
            return [x.item() if isinstance(x, np.generic) else x for x in items]
        value = _load_value(self.context, value_spec)
        if isinstance(value, np.generic):
            value = np.asarray(value)
        return value


# ---------------------------------------------------------------- numeric helpers


def _f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32, copy=False) if x.dtype in (np.float16, np.float64) else x


def _scalar(x) -> Any:
    arr = np.asarray(x)
    return arr.item() if arr.size == 1 else arr


def _unpack_bits(packed: np.ndarray, nbits: int, count: int, signed: bool = False) -> np.ndarray:
    """LSB-first bit fields, one byte after the other (MIL's packing rule) -> `count` integers."""
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), bitorder="little")
    need = nbits * count
    if bits.size < need:
        raise MILInterpreterError(f"packed data holds {bits.size} bits, need {need} for {count} x {nbits}-bit values")
    fields = bits[:need].reshape(count, nbits).astype(np.int32)
    values = (fields << np.arange(nbits, dtype=np.int32)).sum(axis=1)
    if signed:
        values = np.where(values >= 1 << (nbits - 1), values - (1 << nbits), values)
    return values


def _pads(op: Op, pad_type: str, pad, in_hw, k_hw, strides, dilations) -> list[int]:
    """[top, bottom, left, right] padding from MIL's pad_type / pad."""
    if pad_type == "custom":
        p = [int(v) for v in np.asarray(pad).reshape(-1)]
        return p
    if pad_type == "valid":
        return [0, 0, 0, 0]
    if pad_type in ("same", "same_lower"):
        out = []
        for size, k, s, d in zip(in_hw, k_hw, strides, dilations):
            eff = (k - 1) * d + 1
            total = max((int(np.ceil(size / s)) - 1) * s + eff - size, 0)
            small, big = total // 2, total - total // 2
            out += [big, small] if pad_type == "same_lower" else [small, big]
        return out
    raise MILInterpreterError(f"op {op.name!r} ({op.type}): unknown pad_type {pad_type!r}")


def _conv2d(x, w, b, strides, pads, dilations, groups) -> np.ndarray:
    """NCHW conv in float32: 1x1 by matmul, depthwise by shifted multiply-adds, others by im2col."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    sh, sw = strides
    dh, dw = dilations
    pt, pb, pl, pr = pads
    if any(pads):
        x = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    hp, wp = x.shape[2], x.shape[3]
    ho = (hp - dh * (kh - 1) - 1) // sh + 1
    wo = (wp - dw * (kw - 1) - 1) // sw + 1

    def window(i: int, j: int) -> np.ndarray:
        return x[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]

    if groups == 1:
        if kh == kw == 1:
            cols = window(0, 0).reshape(n, c, ho * wo)
            out = np.matmul(w.reshape(o, c), cols)
        else:
            cols = np.stack([window(i, j) for i in range(kh) for j in range(kw)], axis=2)  # n, c, k, ho, wo
            out = np.matmul(w.reshape(o, c * kh * kw), cols.reshape(n, c * kh * kw, ho * wo))
        out = out.reshape(n, o, ho, wo)
    elif groups == c and cg == 1 and o == c:  # depthwise
        out = np.zeros((n, o, ho, wo), dtype=np.float32)
        for i in range(kh):
            for j in range(kw):
                out += window(i, j) * w[:, 0, i, j].reshape(1, o, 1, 1)
    else:
        og = o // groups
        parts = [
            _conv2d(x[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og], None, strides, (0, 0, 0, 0), dilations, 1)
            for g in range(groups)
        ]
        out = np.concatenate(parts, axis=1)
    if b is not None:
        out = out + b.reshape(1, -1, 1, 1)
    return out.astype(np.float32, copy=False)


def _axes(op: Op, axes, rank: int, batched: bool) -> tuple[int, ...]:
    norm = tuple(int(a) % rank for a in np.asarray(axes).reshape(-1))
    if batched and 0 in norm:
        raise MILInterpreterError(f"op {op.name!r} ({op.type}) works over axis 0: cannot run it on a batch; use batch size 1")
    return norm


# ---------------------------------------------------------------- op kernels
# Each kernel gets (op, args with resolved numpy values, batch) and returns a tuple of outputs in
# float32 (or the natural dtype); the interpreter converts each to the op's declared dtype.

_Kernel = Callable[[Op, dict, int], tuple]
_KERNELS: dict[str, _Kernel] = {}
_CONST_KERNELS: dict[str, Callable[[Op, dict], np.ndarray]] = {}


def _kernel(*names: str):
    def register(fn):
        for name in names:
            _KERNELS[name] = fn
        return fn

    return register


def _const_kernel(*names: str):
    def register(fn):
        for name in names:
            _CONST_KERNELS[name] = fn
        return fn

    return register


def _binary(fn):
    def run(op, a, batch):
        return (fn(_f32(np.asarray(a["x"])), _f32(np.asarray(a["y"]))),)

    return run


_kernel("add")(_binary(np.add))
_kernel("sub")(_binary(np.subtract))
_kernel("mul")(_binary(np.multiply))
_kernel("real_div")(_binary(np.divide))
_kernel("maximum")(_binary(np.maximum))
_kernel("minimum")(_binary(np.minimum))


@_kernel("relu")
def _relu(op, a, batch):
    return (np.maximum(_f32(a["x"]), np.float32(0)),)


@_kernel("sigmoid")
def _sigmoid(op, a, batch):
    x = _f32(a["x"])
    return ((1.0 / (1.0 + np.exp(-x))).astype(np.float32),)


@_kernel("sigmoid_hard")
def _sigmoid_hard(op, a, batch):
    # min(max(alpha * x + beta, 0), 1)
    x = _f32(a["x"])
    alpha, beta = np.float32(_scalar(a["alpha"])), np.float32(_scalar(a["beta"]))
    return (np.minimum(np.maximum(alpha * x + beta, np.float32(0)), np.float32(1)),)


@_kernel("thresholded_relu")
def _thresholded_relu(op, a, batch):
    # x if x >= alpha else 0
    x = _f32(a["x"])
    return (np.where(x >= np.float32(_scalar(a["alpha"])), x, np.float32(0)),)


@_kernel("clip")
def _clip(op, a, batch):
    return (np.clip(_f32(a["x"]), np.float32(_scalar(a["alpha"])), np.float32(_scalar(a["beta"]))),)


@_kernel("conv")
def _conv(op, a, batch):
    x, w = _f32(a["x"]), _f32(a["weight"])
    if x.ndim != 4:
        raise MILInterpreterError(f"op {op.name!r} (conv): only 2-D convolutions (rank-4 input) are implemented, got rank {x.ndim}")
    b = _f32(a["bias"]) if a.get("bias") is not None else None
    strides = tuple(int(v) for v in np.asarray(a.get("strides", (1, 1))).reshape(-1))
    dilations = tuple(int(v) for v in np.asarray(a.get("dilations", (1, 1))).reshape(-1))
    groups = int(_scalar(a.get("groups", 1)))
    pad_type = str(_scalar(a.get("pad_type", "valid")))
    pads = _pads(op, pad_type, a.get("pad", (0, 0, 0, 0)), x.shape[2:], w.shape[2:], strides, dilations)
    return (_conv2d(x, w, b, strides, pads, dilations, groups),)


@_kernel("linear")
def _linear(op, a, batch):
    x, w = _f32(a["x"]), _f32(a["weight"])
    # one product per row (a stack of 1-row matmuls), so a row's result does not depend on the batch
    out = np.matmul(x[..., None, :], w.T)[..., 0, :]
    if a.get("bias") is not None:
        out = out + _f32(a["bias"])
    return (out,)


@_kernel("reduce_mean")
def _reduce_mean(op, a, batch):
    x = _f32(a["x"])
    axes = _axes(op, a["axes"], x.ndim, batch > 1) if a.get("axes") is not None else None
    keep = bool(_scalar(a.get("keep_dims", False)))
    return (np.mean(x, axis=axes, keepdims=keep, dtype=np.float32),)


def _bilinear_axis(n_in: int, n_out: int, align_corners: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower index, upper index, upper weight) per output position along one axis, by the grid
    MIL's upsample_bilinear documents (coremltools ops/defs/iOS15/image_resizing.py)."""
    i = np.arange(n_out, dtype=np.float64)
    if align_corners:
        grid = i * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        spacing = n_in / n_out
        grid = i * spacing + 0.5 * spacing - 0.5
    grid = np.clip(grid, 0, n_in - 1)
    lo = np.floor(grid).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (grid - lo).astype(np.float32)


@_kernel("upsample_bilinear")
def _upsample_bilinear(op, a, batch):
    x = _f32(a["x"])
    h, w = x.shape[-2:]
    sh, sw = float(_scalar(a.get("scale_factor_height", 1))), float(_scalar(a.get("scale_factor_width", 1)))
    align = bool(_scalar(a.get("align_corners", True)))
    if a.get("half_pixel_centers") is not None and bool(_scalar(a["half_pixel_centers"])) == align:
        raise MILInterpreterError(f"op {op.name!r} (upsample_bilinear): half_pixel_centers={not align} with "
                                  f"align_corners={align} is not implemented")
    ho, wo = int(np.floor(h * sh)), int(np.floor(w * sw))  # the output size; the grid is recomputed from it
    y0, y1, wy = _bilinear_axis(h, ho, align)
    x0, x1, wx = _bilinear_axis(w, wo, align)
    rows = x[..., y0, :] * (1 - wy)[:, None] + x[..., y1, :] * wy[:, None]
    return ((rows[..., x0] * (1 - wx) + rows[..., x1] * wx).astype(np.float32),)


@_kernel("softmax")
def _softmax(op, a, batch):
    x = _f32(a["x"])
    axis = _axes(op, [_scalar(a.get("axis", -1))], x.ndim, batch > 1)[0]
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return (e / np.sum(e, axis=axis, keepdims=True),)


@_kernel("reshape")
def _reshape(op, a, batch):
    x = np.asarray(a["x"])
    shape = [int(v) for v in np.asarray(a["shape"]).reshape(-1)]
    if batch > 1:
        if not shape or shape[0] not in (1, batch):
            raise MILInterpreterError(
                f"op {op.name!r} (reshape to {shape}) does not keep axis 0 as the batch axis; use batch size 1"
            )
        shape[0] = batch
    return (x.reshape(shape),)


@_kernel("cast")
def _cast(op, a, batch):
    dtype = str(_scalar(a["dtype"]))
    if dtype not in _NP_DTYPES:
        raise MILInterpreterError(f"op {op.name!r} (cast): unknown target dtype {dtype!r}")
    x = np.asarray(a["x"])
    if np.issubdtype(_NP_DTYPES[dtype], np.integer) and x.dtype.kind == "f":
        x = np.trunc(x)  # MIL casts float -> int by truncation toward zero
    return (x.astype(_NP_DTYPES[dtype]),)


@_kernel("classify")
def _classify(op, a, batch):
    probs = _f32(np.asarray(a["probabilities"]))
    classes = list(a["classes"])
    rows = probs.reshape(-1, probs.shape[-1])
    if rows.shape[-1] != len(classes):
        raise MILInterpreterError(f"op {op.name!r} (classify): {rows.shape[-1]} probabilities for {len(classes)} classes")
    top = np.argmax(rows, axis=-1)
    labels = np.array([classes[i] for i in top], dtype=object)
    dicts = [dict(zip(classes, map(float, row))) for row in rows]
    if batch == 1 and probs.shape[0] == 1:
        return labels[0], dicts[0]
    return labels, dicts


# ---------------------------------------------------------------- constexpr (decompression) kernels


def _promote_to_axis(v: np.ndarray, rank: int, axis: int) -> np.ndarray:
    v = np.asarray(v)
    if v.ndim == 0 or v.size == 1:
        return v.reshape(())
    shape = [1] * rank
    shape[axis] = v.size
    return v.reshape(shape)


@_const_kernel("constexpr_affine_dequantize")
def _affine_dequantize(op, a):
    # iOS16: scale * (quantized_data - zero_point), scale / zero_point scalar or per `axis`.
    q = np.asarray(a["quantized_data"])
    axis = int(_scalar(a["axis"])) % q.ndim
    scale = _promote_to_axis(_f32(np.asarray(a["scale"])), q.ndim, axis)
    zp = _promote_to_axis(np.asarray(a["zero_point"]).astype(np.float32), q.ndim, axis)
    return scale * (q.astype(np.float32) - zp)


@_const_kernel("constexpr_blockwise_shift_scale")
def _blockwise_shift_scale(op, a):
    # iOS18: scale[block] * (data - offset[block]); block size per axis = data.shape / scale.shape.
    data = np.asarray(a["data"]).astype(np.float32)
    scale = _f32(np.asarray(a["scale"]))
    offset = a.get("offset")
    if scale.ndim != data.ndim:
        raise MILInterpreterError(f"op {op.name!r}: scale rank {scale.ndim} != data rank {data.ndim}")

    def expand(v):
        for axis, (d, s) in enumerate(zip(data.shape, v.shape)):
            if d % s:
                raise MILInterpreterError(f"op {op.name!r}: data dim {d} is not a multiple of scale dim {s} on axis {axis}")
            if d != s:
                v = np.repeat(v, d // s, axis=axis)
        return v

    if offset is not None:
        data = data - expand(np.asarray(offset).astype(np.float32))
    return expand(scale) * data


@_const_kernel("constexpr_lut_to_dense")
def _lut_to_dense(op, a):
    lut = np.asarray(a["lut"])
    if "shape" in a:
        # iOS16: per-tensor LUT of 2^nbits entries; `indices` are nbits-wide fields packed in bytes.
        shape = tuple(int(v) for v in np.asarray(a["shape"]).reshape(-1))
        nbits = int(round(np.log2(lut.size)))
        if 1 << nbits != lut.size:
            raise MILInterpreterError(f"op {op.name!r}: LUT size {lut.size} is not a power of two")
        idx = _unpack_bits(np.asarray(a["indices"]), nbits, int(np.prod(shape)))
        return lut.reshape(-1)[idx].reshape(shape)
    # iOS18: lut (*groups, NUM_PALETTES, VECTOR_SIZE) over unpacked `indices`; each axis' group
    # block = indices.shape[i] / lut.shape[i]; vectors (VECTOR_SIZE > 1) are laid along vector_axis.
    idx = np.asarray(a["indices"]).astype(np.int64)
    k = idx.ndim
    if lut.ndim != k + 2:
        raise MILInterpreterError(f"op {op.name!r}: LUT rank {lut.ndim} != indices rank {k} + 2")
    groups = lut.shape[:k]
    palettes, vec = lut.shape[k], lut.shape[k + 1]
    flat_group = np.zeros(idx.shape, dtype=np.int64)
    for axis in range(k):
        block = idx.shape[axis] // groups[axis]
        coord = (np.arange(idx.shape[axis]) // block).reshape([-1 if i == axis else 1 for i in range(k)])
        flat_group = flat_group * groups[axis] + coord
    table = lut.reshape(-1, palettes, vec)
    out = table[flat_group, idx]  # (*indices.shape, vec)
    if vec == 1:
        return out[..., 0]
    axis = int(_scalar(a["vector_axis"])) % k
    out = np.moveaxis(out, -1, axis + 1)  # (..., idx_axis, vec, ...) -> merge the two
    shape = list(idx.shape)
    shape[axis] *= vec
    return out.reshape(shape)


# ---------------------------------------------------------------- the program


SUPPORTED_OPS: tuple[str, ...] = tuple(sorted({"const", *_KERNELS, *_CONST_KERNELS}))


class MILProgram:
    """An ML program read back from a `.mlpackage` (or a spec + weights folder), ready to run."""

    def __init__(self, spec, weights_dir: str | os.PathLike | None = None, *, path: str | os.PathLike | None = None,
                 function: str = "main") -> None:
        if spec.WhichOneof("Type") != "mlProgram":
            raise MILInterpreterError(f"{path or 'model'} is not an ML program (it is a {spec.WhichOneof('Type')!r})")
        functions = spec.mlProgram.functions
        if function not in functions:
            raise MILInterpreterError(f"{path or 'program'} has no function {function!r} (has {list(functions)})")
        func = functions[function]
        self.path = Path(path) if path is not None else None
        self.spec = spec
        self.spec_version = int(spec.specificationVersion)
        self.opset = func.opset
        block = func.block_specializations[func.opset]
        decode = _ValueDecoder(str(weights_dir) if weights_dir is not None else None)
        self.inputs: dict[str, TensorSpec] = {v.name: _tensor_spec(v) for v in func.inputs}
        self.image_inputs: dict[str, ImageInput] = {}
        for feature in spec.description.input:
            if feature.type.WhichOneof("Type") == "imageType":
                it = feature.type.imageType
                self.image_inputs[feature.name] = ImageInput(
                    feature.name, _COLOR_SPACES.get(it.colorSpace, str(it.colorSpace)), int(it.width), int(it.height)
                )
        self.outputs: list[str] = list(block.outputs)
        self.ops: list[Op] = []
        self.constants: dict[str, Any] = {}
        for index, op_spec in enumerate(block.operations):
            args: dict[str, Any] = {}
            for key, value in op_spec.attributes.items():
                if key != "name":
                    args[key] = ("value", decode(value))
            for key, argument in op_spec.inputs.items():
                bound = []
                for binding in argument.arguments:
                    kind = binding.WhichOneof("binding")
                    bound.append(("var", binding.name) if kind == "name" else ("value", decode(binding.value)))
                args[key] = bound[0] if len(bound) == 1 else bound
            op = Op(index=index, type=op_spec.type, args=args, outputs=[_tensor_spec(o) for o in op_spec.outputs])
            self.ops.append(op)
        self._materialize_constants()

    # ---------------------------------------------------------------- construction

    @classmethod
    def load(cls, path: str | os.PathLike, function: str = "main") -> MILProgram:
        """Read an `.mlpackage` (no Core ML runtime needed)."""
        import coremltools as ct

        path = Path(path)
        if not path.exists():
            raise MILInterpreterError(f"{path} does not exist")
        try:
            model = ct.models.MLModel(str(path), skip_model_load=True)
        except Exception as exc:  # noqa: BLE001 - coremltools raises many types for bad packages
            raise MILInterpreterError(f"{path} is not a readable Core ML package ({type(exc).__name__}: {exc})") from None
        return cls(model.get_spec(), model.weights_dir, path=path, function=function)

    def _materialize_constants(self) -> None:
        for op in self.ops:
            if op.type == "const":
                value = self._value(op, "val")
                self.constants[op.name] = self._as_declared(op, op.outputs[0], value)
            elif op.type in _CONST_KERNELS:
                args = {k: self._arg(op, k, self.constants) for k in op.args}
                value = _CONST_KERNELS[op.type](op, args)
                self.constants[op.name] = self._as_declared(op, op.outputs[0], value, check_shape=True)

    def _value(self, op: Op, key: str):
        kind, value = op.args[key]
        if kind != "value":
            raise MILInterpreterError(f"op {op.name!r} ({op.type}): {key} is not a literal")
        return value

    # ---------------------------------------------------------------- description

    def op_counts(self) -> dict[str, int]:
        """Histogram of op types (const included), sorted by name."""
        return dict(sorted(Counter(op.type for op in self.ops).items()))

    def unsupported_ops(self) -> dict[str, list[str]]:
        """Op type -> names of the ops of that type the interpreter cannot run (empty if none)."""
        out: dict[str, list[str]] = {}
        for op in self.ops:
            if op.type != "const" and op.type not in _KERNELS and op.type not in _CONST_KERNELS:
                out.setdefault(op.type, []).append(op.name)
        return out

    def compute_ops(self) -> list[Op]:
        """The ops that run per inference (not const / constexpr), in program order."""
        return [op for op in self.ops if op.type != "const" and op.type not in _CONST_KERNELS]

    def image_preprocessing(self, input_name: str | None = None) -> dict:
        """The ImageType scale and bias the converter put at the top of the program.

        Follows the input through its leading `mul` (scale) and `add` (bias) ops with constant
        operands; returns {"input", "color_space", "width", "height", "scale", "bias"} (bias per
        channel, zeros when the program adds none)."""
        name = input_name or next(iter(self.image_inputs), None)
        if name is None or name not in self.image_inputs:
            raise MILInterpreterError(f"the program has no image input {input_name!r}")
        img = self.image_inputs[name]
        scale, bias, current = 1.0, np.zeros(img.channels, dtype=np.float32), name
        for op in self.compute_ops():
            if op.type not in ("mul", "add"):
                continue
            refs = {k: v for k, v in op.args.items() if k in ("x", "y")}
            names = {k: v[1] for k, v in refs.items() if v[0] == "var"}
            if current not in names.values():
                continue
            other = [v for k, v in names.items() if v != current]
            if len(other) != 1 or other[0] not in self.constants:
                break
            const = np.asarray(self.constants[other[0]], dtype=np.float32)
            if op.type == "mul":
                scale = float(const.reshape(-1)[0]) if const.size == 1 else const.reshape(-1).tolist()
            else:
                bias = np.broadcast_to(const.reshape(-1), (img.channels,)).astype(np.float32)
            current = op.name
            if op.type == "add":
                break
        return {"input": name, "color_space": img.color_space, "width": img.width, "height": img.height,
                "scale": scale, "bias": [float(b) for b in bias]}

    # ---------------------------------------------------------------- feeding

    def image_feed(self, images: np.ndarray, input_name: str | None = None) -> dict[str, np.ndarray]:
        """uint8 pictures (N, H, W, 3) in RGB order -- or (N, H, W) / (N, H, W, 1) gray -- to the
        float tensor Core ML hands the program: (N, C, H, W), values 0..255, in the input's colour
        space (RGB pictures are reversed for a BGR input). The pictures must already have the
        input's size (Core ML does not resize; Vision or the app does)."""
        name = input_name or next(iter(self.image_inputs), None)
        if name is None:
            raise MILInterpreterError("the program has no image input")
        img = self.image_inputs[name]
        arr = np.asarray(images)
        if arr.dtype != np.uint8:
            raise MILInterpreterError(f"pictures must be uint8, got {arr.dtype}")
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.ndim != 4 or arr.shape[1:3] != (img.height, img.width):
            raise MILInterpreterError(
                f"pictures must be (N, {img.height}, {img.width}, C) for input {name!r}; got {arr.shape} "
                "(resize them to the model's resolution first)"
            )
        if img.channels == 3:
            if arr.shape[-1] == 1:
                arr = np.repeat(arr, 3, axis=-1)
            elif arr.shape[-1] != 3:
                raise MILInterpreterError(f"RGB pictures need 3 channels, got {arr.shape[-1]}")
            if img.color_space == "BGR":
                arr = arr[..., ::-1]
        else:
            if arr.shape[-1] == 3:  # Core ML converts colour to gray (ITU-R BT.601 luma) for gray inputs
                arr = np.rint(arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
            elif arr.shape[-1] != 1:
                raise MILInterpreterError(f"gray pictures need 1 channel, got {arr.shape[-1]}")
        tensor = np.ascontiguousarray(np.transpose(arr, (0, 3, 1, 2))).astype(np.float32)
        dtype = self.inputs[name].dtype
        return {name: tensor.astype(_NP_DTYPES.get(dtype, np.float32))}

    # ---------------------------------------------------------------- execution

    def _arg(self, op: Op, key: str, env: Mapping[str, Any]):
        bound = op.args.get(key)
        if bound is None:
            return None
        if isinstance(bound, list):
            return [self._resolve(op, b, env) for b in bound]
        return self._resolve(op, bound, env)

    def _resolve(self, op: Op, bound, env):
        kind, ref = bound
        if kind == "value":
            return ref
        if ref in env:
            return env[ref]
        if ref in self.constants:
            return self.constants[ref]
        raise MILInterpreterError(f"op {op.name!r} ({op.type}) reads {ref!r}, which nothing produced before it")

    def _as_declared(self, op: Op, spec: TensorSpec, value, *, batch: int = 1, check_shape: bool = True):
        if spec.kind != "tensor" or spec.dtype == "string":
            return value
        np_dtype = _NP_DTYPES.get(spec.dtype)
        if np_dtype is None:
            raise MILInterpreterError(f"op {op.name!r} ({op.type}) declares unsupported dtype {spec.dtype!r}")
        arr = np.asarray(value)
        if spec.dtype in _FLOATS or arr.dtype != np_dtype:
            with np.errstate(over="ignore", invalid="ignore"):  # fp16 overflow to inf is the semantics
                arr = arr.astype(np_dtype)
        if check_shape and spec.shape is not None:
            expected = spec.shape
            if batch > 1 and op.type not in ("const",) and op.type not in _CONST_KERNELS:
                if not expected or expected[0] != 1:
                    raise MILInterpreterError(
                        f"op {op.name!r} ({op.type}) output shape {expected} has no batch axis of 1; use batch size 1"
                    )
                expected = (batch, *expected[1:])
            if tuple(arr.shape) != tuple(expected):
                raise MILInterpreterError(
                    f"op {op.name!r} ({op.type}) computed shape {tuple(arr.shape)} but the program declares {tuple(expected)}"
                )
        return arr

    def check_supported(self) -> None:
        """Raise UnsupportedOpError naming every op type the interpreter cannot run."""
        bad = self.unsupported_ops()
        if bad:
            listing = "; ".join(f"{t} (e.g. op {names[0]!r}, {len(names)} op(s))" for t, names in bad.items())
            raise UnsupportedOpError(
                f"the MIL interpreter does not implement {len(bad)} op type(s) in "
                f"{self.path or 'this program'}: {listing}. Supported: {', '.join(SUPPORTED_OPS)}"
            )

    def run(self, feeds: Mapping[str, np.ndarray], *, capture: bool | Iterable[str] = False) -> RunResult:
        """Execute the program on `feeds` (input name -> array with the declared shape, or a batch
        of N along axis 0). `capture=True` keeps every op's outputs; an iterable keeps those names.
        Returns outputs by name (classify: label(s) and label -> probability dict(s))."""
        self.check_supported()
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise MILInterpreterError(f"missing input(s) {missing}; the program takes {list(self.inputs)}")
        env: dict[str, Any] = {}
        batch = None
        for name, spec in self.inputs.items():
            arr = np.asarray(feeds[name])
            if spec.shape is not None:
                if arr.ndim != len(spec.shape) or tuple(arr.shape[1:]) != tuple(spec.shape[1:]):
                    raise MILInterpreterError(f"input {name!r} must have shape (N, {', '.join(map(str, spec.shape[1:]))}); got {arr.shape}")
                if spec.shape[0] != 1 and arr.shape[0] != spec.shape[0]:
                    raise MILInterpreterError(f"input {name!r} must have shape {spec.shape}; got {arr.shape}")
            n = arr.shape[0] if arr.ndim else 1
            if batch is not None and n != batch:
                raise MILInterpreterError(f"inputs disagree on the batch size ({batch} vs {n})")
            batch = n
            env[name] = arr.astype(_NP_DTYPES.get(spec.dtype, arr.dtype), copy=False)
        batch = batch or 1
        keep = (lambda _: True) if capture is True else (lambda n, s=set(capture or ()): n in s)
        intermediates: dict[str, np.ndarray] = {}
        for op in self.compute_ops():
            args = {k: self._arg(op, k, env) for k in op.args}
            try:
                results = _KERNELS[op.type](op, args, batch)
            except MILInterpreterError:
                raise
            except Exception as exc:  # noqa: BLE001 - name the op that failed
                raise MILInterpreterError(f"op {op.name!r} ({op.type}, #{op.index}) failed: {type(exc).__name__}: {exc}") from exc
            if len(results) != len(op.outputs):
                raise MILInterpreterError(f"op {op.name!r} ({op.type}) gave {len(results)} outputs, program declares {len(op.outputs)}")
            for spec, value in zip(op.outputs, results):
                value = self._as_declared(op, spec, value, batch=batch)
                env[spec.name] = value
                if keep(spec.name):
                    intermediates[spec.name] = value
        outputs = {}
        for name in self.outputs:
            if name in env:
                outputs[name] = env[name]
            elif name in self.constants:
                outputs[name] = self.constants[name]
            elif name in self.inputs:
                outputs[name] = env[name]
            else:
                raise MILInterpreterError(f"program output {name!r} was never produced")
        return RunResult(outputs=outputs, intermediates=intermediates)

    def predict_images(self, images: np.ndarray, *, batch_size: int | None = None,
                       outputs: Iterable[str] | None = None) -> dict[str, Any]:
        """Run uint8 pictures (N, H, W, 3) through the image input in batches; concatenated outputs.

        Tensor outputs are stacked along axis 0; classify outputs become a list of labels and a list
        of label -> probability dicts. `batch_size` defaults to what keeps the working set modest
        (500 pictures at 32x32, a dozen at 224x224)."""
        arr = np.asarray(images)
        if batch_size is None:
            pixels = int(np.prod(arr.shape[1:])) if arr.ndim > 1 else 1
            batch_size = max(1, min(500, 2_000_000 // max(pixels, 1)))
        wanted = list(outputs) if outputs is not None else self.outputs
        collected: dict[str, list] = {name: [] for name in wanted}
        for start in range(0, len(arr), batch_size):
            chunk = arr[start:start + batch_size]
            result = self.run(self.image_feed(chunk)).outputs
            for name in wanted:
                value = result[name]
                if isinstance(value, np.ndarray) and value.dtype != object:
                    collected[name].append(value)
                elif isinstance(value, (list, np.ndarray)):
                    collected[name].extend(list(value))
                else:
                    collected[name].append(value)
        return {name: (np.concatenate(parts) if parts and isinstance(parts[0], np.ndarray) else parts)
                for name, parts in collected.items()}


def load_program(path: str | os.PathLike, function: str = "main") -> MILProgram:
    """Read the ML program of an `.mlpackage` for the numpy interpreter."""
    return MILProgram.load(path, function=function)
