"""The numpy MIL interpreter on small hand-built ML programs (no torch conversion involved):
op semantics against torch's functional ops, fp16 rounding, the compression ops against
coremltools' own decompression, image inputs, batching, intermediates, unknown ops."""

from __future__ import annotations

import coremltools as ct  # a hard dependency: a broken install fails here, it is not skipped
import coremltools.optimize.coreml as cto
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil import Builder as mb  # noqa: E402

from mbv3_mobile.core.errors import UserError  # noqa: E402
from mbv3_mobile.verify.mil_interpreter import (  # noqa: E402
    SUPPORTED_OPS,
    MILInterpreterError,
    MILProgram,
    UnsupportedOpError,
    load_program,
)

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)
B1 = RNG.standard_normal(8).astype(np.float32)
W2 = RNG.standard_normal((8, 1, 3, 3)).astype(np.float32)  # depthwise
WG = RNG.standard_normal((6, 4, 1, 1)).astype(np.float32)  # groups=2
WD = RNG.standard_normal((6, 6, 2, 2)).astype(np.float32)  # dilation 2
FC = RNG.standard_normal((5, 6)).astype(np.float32)
FB = RNG.standard_normal(5).astype(np.float32)
SHIFT = RNG.standard_normal((1, 6, 1, 1)).astype(np.float32)


def _convert(prog, target=ct.target.iOS16, precision=ct.precision.FLOAT32, **kwargs):
    return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target,
                      compute_precision=precision, **kwargs)


def _save(model, path):
    model.save(str(path))
    return path


@pytest.fixture(scope="module")
def ops_package(tmp_path_factory):
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 9, 9))], opset_version=ct.target.iOS16)
    def prog(x):
        y = mb.conv(x=x, weight=W1, bias=B1, strides=[2, 2], pad_type="custom", pad=[1, 0, 0, 1], name="c1")
        y = mb.conv(x=y, weight=W2, groups=8, pad_type="same", name="dw")
        y = mb.sigmoid_hard(x=y, alpha=0.2, beta=0.5, name="hsig")
        y = mb.conv(x=y, weight=WG, groups=2, pad_type="valid", name="grp")
        y = mb.thresholded_relu(x=y, alpha=0.1, name="trelu")
        y = mb.conv(x=y, weight=WD, dilations=[2, 2], pad_type="valid", name="dil")
        y = mb.add(x=mb.real_div(x=y, y=np.float32(3.0), name="div"), y=SHIFT, name="shift")
        y = mb.clip(x=mb.relu(x=y, name="relu"), alpha=0.0, beta=2.0, name="clip")
        y = mb.mul(x=mb.sigmoid(x=y, name="sig"), y=mb.maximum(x=y, y=np.float32(0.1), name="max"), name="gate")
        y = mb.minimum(x=mb.sub(x=y, y=np.float32(0.25), name="sub"), y=np.float32(5.0), name="min")
        y = mb.reduce_mean(x=y, axes=[2, 3], keep_dims=True, name="gap")
        y = mb.reshape(x=y, shape=[1, 6], name="flat")
        y = mb.linear(x=y, weight=FC, bias=FB, name="fc")
        return mb.softmax(x=y, axis=-1, name="probs")

    # no graph passes: they would fold real_div / add into the conv, and the point is each op
    return _save(_convert(prog, pass_pipeline=ct.PassPipeline.EMPTY), tmp_path_factory.mktemp("mil") / "ops.mlpackage")


def _torch_reference(x: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    y = F.conv2d(F.pad(torch.from_numpy(x), (0, 1, 1, 0)), torch.from_numpy(W1), torch.from_numpy(B1), stride=2)
    out["c1"] = y
    y = F.conv2d(y, torch.from_numpy(W2), padding=1, groups=8)
    out["dw"] = y
    y = F.conv2d(torch.clamp(0.2 * y + 0.5, 0, 1), torch.from_numpy(WG), groups=2)
    out["grp"] = y
    y = torch.where(y >= 0.1, y, torch.zeros_like(y))
    out["trelu"] = y
    y = F.conv2d(y, torch.from_numpy(WD), dilation=2)
    out["dil"] = y
    y = torch.clamp(torch.relu(y / 3.0 + torch.from_numpy(SHIFT)), 0.0, 2.0)
    y = torch.sigmoid(y) * torch.maximum(y, torch.tensor(0.1))
    y = torch.minimum(y - 0.25, torch.tensor(5.0))
    y = F.linear(y.mean(dim=(2, 3), keepdim=True).reshape(-1, 6), torch.from_numpy(FC), torch.from_numpy(FB))
    out["fc"] = y
    out["probs"] = torch.softmax(y, dim=-1)
    return {k: v.numpy() for k, v in out.items()}


def test_op_semantics_match_torch(ops_package):
    program = load_program(ops_package)
    types = {op.type for op in program.compute_ops()}
    assert {"conv", "sigmoid_hard", "thresholded_relu", "real_div", "clip", "sigmoid", "maximum", "minimum",
            "sub", "add", "mul", "relu", "reduce_mean", "reshape", "linear", "softmax"} <= types
    x = RNG.standard_normal((1, 3, 9, 9)).astype(np.float32)
    result = program.run({"x": x}, capture=True)
    ref = _torch_reference(x)
    for name in ("c1", "dw", "grp", "trelu", "dil", "fc"):
        np.testing.assert_allclose(result.intermediates[name], ref[name], rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(result.outputs["probs"], ref["probs"], rtol=1e-5, atol=1e-6)


def test_interpreter_reads_the_same_program_as_coremltools(ops_package):
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    model = ct.models.MLModel(str(ops_package), skip_model_load=True)
    spec = model.get_spec()
    pymil = milproto_load(spec, spec.specificationVersion, model.weights_dir)
    theirs = [(op.op_type, op.outputs[0].name) for op in pymil.functions["main"].operations if op.op_type != "const"]
    ours = [(op.type, op.name) for op in load_program(ops_package).compute_ops()]
    assert ours == theirs


def test_batch_equals_one_by_one_and_intermediates(ops_package):
    program = load_program(ops_package)
    xs = RNG.standard_normal((4, 3, 9, 9)).astype(np.float32)
    batched = program.run({"x": xs}).outputs["probs"]
    single = np.concatenate([program.run({"x": xs[i:i + 1]}).outputs["probs"] for i in range(4)])
    np.testing.assert_array_equal(batched, single)

    everything = program.run({"x": xs[:1]}, capture=True).intermediates
    assert list(everything) == [op.name for op in program.compute_ops()]
    only = program.run({"x": xs[:1]}, capture=["dw"]).intermediates
    assert list(only) == ["dw"] and only["dw"].shape == (1, 8, 4, 4)

    with pytest.raises(MILInterpreterError, match=r"input 'x' must have shape \(N, 3, 9, 9\)"):
        program.run({"x": np.zeros((1, 3, 8, 8), np.float32)})
    with pytest.raises(MILInterpreterError, match="missing input"):
        program.run({})


def test_fp16_programs_round_every_op(tmp_path):
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4))], opset_version=ct.target.iOS16)
    def prog(x):
        h = mb.cast(x=x, dtype="fp16", name="h")
        small = mb.add(x=h, y=np.float16(1e-4), name="plus_tiny")  # below fp16 resolution at 1.0
        big = mb.mul(x=h, y=np.float16(300.0), name="times300")
        big = mb.mul(x=big, y=np.float16(300.0), name="overflow")  # 300*300 > 65504 -> inf
        return mb.cast(x=small, dtype="fp32", name="small"), mb.cast(x=big, dtype="fp32", name="big")

    program = load_program(_save(_convert(prog), tmp_path / "fp16.mlpackage"))
    x = np.array([[1.0, 0.1, -2.0, 0.5]], dtype=np.float32)
    out = program.run({"x": x}, capture=True)
    assert out.intermediates["h"].dtype == np.float16
    expected_small = (x.astype(np.float16) + np.float16(1e-4)).astype(np.float32)
    np.testing.assert_array_equal(out.outputs["small"], expected_small)
    assert out.outputs["small"][0, 0] == 1.0  # fp32 arithmetic would give 1.0001
    assert np.isinf(out.outputs["big"][0, 0]) and np.isinf(out.outputs["big"][0, 2])
    assert out.outputs["big"][0, 1] == np.float32(np.float16(np.float16(np.float16(0.1) * np.float16(300)) * np.float16(300)))


@pytest.mark.parametrize(
    "case",
    ["ios16_int8_affine", "ios16_palette6", "ios18_int4_block", "ios18_palette_grouped", "ios18_palette_vector"],
)
def test_compression_ops_decode_like_coremltools(tmp_path, case):
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    target = ct.target.iOS18 if case.startswith("ios18") else ct.target.iOS16
    config = {
        "ios16_int8_affine": cto.OpLinearQuantizerConfig(mode="linear", dtype="uint8"),
        "ios16_palette6": cto.OpPalettizerConfig(nbits=6, mode="kmeans"),
        "ios18_int4_block": cto.OpLinearQuantizerConfig(mode="linear", dtype="int4", granularity="per_block", block_size=16),
        "ios18_palette_grouped": cto.OpPalettizerConfig(nbits=4, mode="kmeans", granularity="per_grouped_channel", group_size=16),
        "ios18_palette_vector": cto.OpPalettizerConfig(nbits=4, mode="kmeans", cluster_dim=2),
    }[case]
    weight = RNG.standard_normal((64, 32, 3, 3)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 32, 6, 6))], opset_version=target)
    def prog(x):
        return mb.reduce_mean(x=mb.conv(x=x, weight=weight, pad_type="same", name="c"), axes=[2, 3], name="gap")

    model = _convert(prog, target=target, precision=ct.precision.FLOAT16)
    fn = cto.linear_quantize_weights if isinstance(config, cto.OpLinearQuantizerConfig) else cto.palettize_weights
    path = _save(fn(model, cto.OptimizationConfig(global_config=config)), tmp_path / f"{case}.mlpackage")

    program = load_program(path)
    reloaded = ct.models.MLModel(str(path), skip_model_load=True)
    spec = reloaded.get_spec()
    pymil = milproto_load(spec, spec.specificationVersion, reloaded.weights_dir)
    constexprs = [op for op in pymil.functions["main"].operations if op.op_type.startswith("constexpr_")]
    assert len(constexprs) == 1
    (op,) = constexprs
    theirs = op.materialized_val_inference()
    ours = program.constants[op.outputs[0].name]
    assert ours.shape == weight.shape and ours.dtype == np.float16
    np.testing.assert_array_equal(ours, theirs)
    assert np.abs(ours.astype(np.float32) - weight).mean() < 0.35  # a decent approximation of the weights

    x = RNG.standard_normal((2, 32, 6, 6)).astype(np.float32)
    got = program.run({"x": x}).outputs["gap"].astype(np.float32)
    want = F.conv2d(torch.from_numpy(x), torch.from_numpy(theirs.astype(np.float32)), padding=1).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=5e-2)  # fp16 program


def test_image_input_feed_scale_bias_and_channel_order(tmp_path):
    pictures = RNG.integers(0, 256, size=(2, 4, 5, 3), dtype=np.uint8)
    for layout in ("RGB", "BGR"):

        @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 4, 5))], opset_version=ct.target.iOS16)
        def prog(x):
            return mb.mul(x=x, y=np.float32(1.0), name="out")

        image = ct.ImageType(name="x", shape=(1, 3, 4, 5), scale=2 / 255, bias=[1.0, 2.0, 3.0], color_layout=layout)
        program = load_program(_save(_convert(prog, inputs=[image]), tmp_path / f"{layout}.mlpackage"))
        pre = program.image_preprocessing()
        assert pre["color_space"] == layout and (pre["width"], pre["height"]) == (5, 4)
        assert pre["scale"] == pytest.approx(2 / 255) and pre["bias"] == [1.0, 2.0, 3.0]
        out = program.run(program.image_feed(pictures)).outputs["out"]
        channels = pictures[..., ::-1] if layout == "BGR" else pictures
        want = channels.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(2 / 255) + np.array([1, 2, 3], np.float32).reshape(1, 3, 1, 1)
        np.testing.assert_allclose(out, want, rtol=1e-6)
        gray = program.image_feed(pictures[..., 0])["x"]
        assert gray.shape == (2, 3, 4, 5)  # gray pictures are replicated to the colour channels
        with pytest.raises(MILInterpreterError, match=r"resize them to the model's resolution"):
            program.image_feed(np.zeros((1, 8, 8, 3), np.uint8))
        with pytest.raises(MILInterpreterError, match="must be uint8"):
            program.image_feed(pictures.astype(np.float32))


def test_unknown_op_is_named_never_skipped(tmp_path):
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4))], opset_version=ct.target.iOS16)
    def prog(x):
        y = mb.relu(x=x, name="before")
        return mb.gelu(x=y, name="mystery_gelu")

    program = load_program(_save(_convert(prog), tmp_path / "gelu.mlpackage"))
    assert "gelu" not in SUPPORTED_OPS
    assert program.unsupported_ops() == {"gelu": ["mystery_gelu"]}
    with pytest.raises(UnsupportedOpError, match=r"gelu \(e\.g\. op 'mystery_gelu'") as err:
        program.run({"x": np.ones((1, 4), np.float32)})
    assert isinstance(err.value, UserError)

    # an op type no MIL opset has, crafted into the protobuf of a valid package
    model = ct.models.MLModel(str(tmp_path / "gelu.mlpackage"), skip_model_load=True)
    spec = model.get_spec()
    func = spec.mlProgram.functions["main"]
    for op in func.block_specializations[func.opset].operations:
        if op.type == "relu":
            op.type = "frobnicate"
    crafted = MILProgram(spec, model.weights_dir)
    with pytest.raises(UnsupportedOpError, match=r"frobnicate \(e\.g\. op 'before'.*gelu"):
        crafted.run({"x": np.ones((1, 4), np.float32)})


def test_not_a_package(tmp_path):
    with pytest.raises(MILInterpreterError, match="does not exist"):
        load_program(tmp_path / "missing.mlpackage")
    (tmp_path / "junk.mlpackage").mkdir()
    with pytest.raises(MILInterpreterError, match="not a readable Core ML package"):
        load_program(tmp_path / "junk.mlpackage")
