"""ONNX pipeline end to end on the trained CI model and real Fashion-MNIST images."""

import json

import ci_exports
import onnx
import pytest

from mbv3_mobile.pipeline import GateFailure, PipelineError, load_pipeline, run_pipeline
from mbv3_mobile.pipeline.runner import plan_pipeline


@pytest.fixture(scope="module")
def onnx_run(trained_ci_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    spec = load_pipeline("onnx")
    params = {"checkpoint": str(trained_ci_checkpoint), "out": str(out), **ci_exports.ONNX}
    return spec, params, run_pipeline(spec, params, progress=False), out


def test_artifacts_manifest_and_figures(onnx_run):
    _, _, results, out = onnx_run
    folder = out / "mobilenet_v3_small_050_32px"
    manifest = json.loads((folder / "manifest.json").read_text())
    names = {f["path"] for f in manifest["files"]}
    assert {"model.onnx", "model_int8.onnx", "model.ort", "model_int8.ort", "required_operators.config", "labels.txt",
            "README.md"} <= names
    assert manifest["preprocessing"]["mean"] == [0.286] * 3 and manifest["labels"][9] == "Ankle boot"
    model = onnx.load(str(folder / "model.onnx"))
    assert model.opset_import[0].version == 18
    onnx.checker.check_model(model, full_check=True)
    fp32, int8 = manifest["figures"]["fp32"], manifest["figures"]["int8"]
    assert fp32["images"] == 500 and fp32["top1_agreement"] == 1.0 and fp32["max_abs_dlogit"] <= 1e-4
    assert int8["images"] == 10000 and int8["top1_drop"] <= 0.005
    assert fp32["reference_top1"] > 0.5  # a trained model, not chance (10 %)
    picked = manifest["variants"]["fp32"]["threads"]  # the .ort timed at 1 .. every usable core of this host
    assert "1" in picked["p50_ms"] and str(picked["recommended"]) in picked["p50_ms"]
    readme = (folder / "README.md").read_text()
    assert f"setIntraOpNumThreads({picked['recommended']})" in readme and "## Threads" in readme


def test_int8_fused_kernels_compute_orts_reference_arithmetic(onnx_run, trained_ci_checkpoint):
    """The same int8 file must compute the same on every host: ORT's fused u8s8 kernels (what runs)
    against its reference QDQ arithmetic (graph optimisations off: dequantize, float op, quantize).
    Full-range weights fail this on x86 CPUs without VNNI, where 16-bit sums saturate (docs/onnx.md)."""
    import onnxruntime as ort

    from mbv3_mobile.export.onnx.runtime import ort_session, run_onnx
    from mbv3_mobile.model.checkpoint import load_checkpoint
    from mbv3_mobile.quantize.pt2e import real_images
    from mbv3_mobile.verify.compare import compare_logits

    _, _, _, out = onnx_run
    path = out / "mobilenet_v3_small_050_32px" / "model_int8.onnx"
    x, _ = real_images(load_checkpoint(trained_ci_checkpoint).preprocessing, 300, split="test")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = run_onnx(ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]), x)
    fused = compare_logits(reference, run_onnx(ort_session(path), x))
    assert fused["snr_db"] >= 35.0 and fused["top1_agreement"] >= 0.99, fused


def test_rerun_is_cached_and_a_calibration_change_rekeys_only_the_int8_chain(onnx_run):
    spec, params, first, _ = onnx_run
    again = run_pipeline(spec, params, progress=False)
    assert not [k for k, r in again.items() if not r.cached and k not in ("package", "_total")]
    # which stages a changed setting rebuilds: the runner's plan (cache keys), nothing built or deleted
    before, after = plan_pipeline(spec, params), plan_pipeline(spec, {**params, "calib_images": 50})
    assert before == {k: r.key for k, r in first.items() if k != "_total"}  # the plan is what a run uses
    assert {k for k in before if before[k] != after[k]} == {"package", *INT8_STAGES}


INT8_STAGES = ("quantize[int8]", "coverage[int8]", "verify[int8]", "ort_format[int8]", "verify_ort[int8]", "threads[int8]")


def test_failing_gate_publishes_nothing(trained_ci_checkpoint, tmp_path):
    spec = load_pipeline("onnx")
    from mbv3_mobile.verify.gates import GateRule

    strict = spec.__class__(**{**spec.__dict__, "gates": {**spec.gates, "classification.fp32": (GateRule("max_abs_dlogit", "<=", 1e-12),)}})
    with pytest.raises(GateFailure, match="max_abs_dlogit"):
        run_pipeline(strict, {"checkpoint": str(trained_ci_checkpoint), "out": str(tmp_path), "variants": ["fp32"],
                              "parity_images": 100}, progress=False)
    assert not any(tmp_path.iterdir())


def test_wrong_arch_is_a_clear_error(trained_ci_checkpoint, tmp_path):
    with pytest.raises(PipelineError, match="seems to be|asked for"):
        run_pipeline(load_pipeline("onnx"), {"checkpoint": str(trained_ci_checkpoint), "arch": "large",
                                             "out": str(tmp_path)}, progress=False)
    with pytest.raises(PipelineError, match="does not exist"):
        run_pipeline(load_pipeline("onnx"), {"checkpoint": str(tmp_path / "missing.pth"), "out": str(tmp_path)},
                     progress=False)


@pytest.mark.slow
def test_drift_localisation_names_the_perturbed_block(trained_ci_checkpoint, fashion_test, tmp_path):
    import copy

    import torch

    from mbv3_mobile import load_checkpoint
    from mbv3_mobile.data.datasets import BatchTransform
    from mbv3_mobile.export.onnx.convert import export_onnx
    from mbv3_mobile.export.onnx.runtime import module_outputs, module_scopes
    from mbv3_mobile.verify.drift import localize

    ck = load_checkpoint(trained_ci_checkpoint)
    image = BatchTransform(ck.preprocessing)(fashion_test.images[:1])
    good = export_onnx(ck.model, 32, tmp_path / "good.onnx")
    clean = localize(ck.model, image, module_outputs(good, image, module_scopes(good)), 1e-4)
    assert clean.module is None and len(clean.compared) > 50
    broken = copy.deepcopy(ck.model)
    with torch.no_grad():
        broken.features[7].block[1][0].weight.mul_(1.05)  # one depthwise conv in block 7
    bad = export_onnx(broken, 32, tmp_path / "bad.onnx")
    report = localize(ck.model, image, module_outputs(bad, image, module_scopes(bad)), 1e-4)
    assert report.module is not None and report.module.startswith("features.7.block.1"), report.table()


@pytest.mark.slow
def test_dynamic_batch_on_request_is_verified_and_recorded_not_gated(trained_ci_checkpoint, fashion_test, tmp_path):
    """--dynamic-batch (the server option): any N, in the .onnx and the .ort alike; EP coverage is
    recorded (NNAPI and the Core ML EP want fixed shapes) but not gated."""
    import torch

    from mbv3_mobile import load_checkpoint
    from mbv3_mobile.data.datasets import BatchTransform
    from mbv3_mobile.export.onnx.runtime import ort_session, run_onnx

    results = run_pipeline(load_pipeline("onnx"), {"checkpoint": str(trained_ci_checkpoint), "out": str(tmp_path),
                                                   "variants": ["fp32"], "parity_images": 500, "dynamic_batch": True},
                           progress=False)
    folder = tmp_path / "mobilenet_v3_small_050_32px"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["dynamic_batch"] is True and manifest["input"]["shape"][0] == "N"
    dim = onnx.load(str(folder / "model.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.HasField("dim_value")
    ck = load_checkpoint(trained_ci_checkpoint)
    x = BatchTransform(ck.preprocessing)(fashion_test.images[:7])
    with torch.no_grad():
        reference = ck.model.eval()(x)
    for file in ("model.onnx", "model.ort"):
        session = ort_session(folder / file)
        logits = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])  # one run, batch 7
        assert logits.shape == (7, 10) and (logits - reference).abs().max() <= 1e-4, file
        assert torch.allclose(run_onnx(session, x), logits, atol=1e-6)
    cov = results["coverage[fp32]"].meta
    assert "gate" not in cov and cov["coverage"]["dynamic_inputs"] == ["image"]
    assert cov["figures"]["coreml_ep_node_coverage"] < 1.0  # what a fixed batch buys
    assert all(j["verdict"] == "pass" for j in results["verify_ort[fp32]"].meta["judged"])


def test_ort_calibration_strides_are_sized_by_a_memory_budget_per_picture():
    import torch

    from mbv3_mobile.export.onnx.convert import calibration_stride

    assert calibration_stride(torch.zeros(100, 3, 32, 32)) == 100  # small pictures: one pass, as ORT does by default
    assert calibration_stride(torch.zeros(80, 3, 512, 512)) == 5  # LR-ASPP Large at 512 px: ~2 GiB a pass
    assert calibration_stride(torch.zeros(97, 3, 512, 512)) == 1  # a divisor of the count, as ORT requires


def test_strided_calibration_gives_a_faithful_int8_model(trained_ci_checkpoint, tmp_path, monkeypatch):
    """The same pictures in strides of 10 (histograms merged across passes) or in one pass: both int8
    models agree with eager fp32 as closely."""
    import onnxruntime as ort
    import torch

    from mbv3_mobile import load_checkpoint
    from mbv3_mobile.export.onnx import convert
    from mbv3_mobile.quantize.pt2e import real_images
    from mbv3_mobile.verify.compare import compare_logits

    ck = load_checkpoint(trained_ci_checkpoint)
    calib, test = real_images(ck.preprocessing, 100, split="train")[0], real_images(ck.preprocessing, 300, split="test")[0]
    src = convert.export_onnx(ck.model.eval(), ck.preprocessing.resolution, tmp_path / "m.onnx")
    convert.quantize_onnx_int8(src, tmp_path / "one.onnx", calib)
    monkeypatch.setattr(convert, "CALIBRATION_BYTES", calib[:1].numel() * 4 * convert.ACTIVATIONS_PER_INPUT * 10)
    assert convert.calibration_stride(calib) == 10
    convert.quantize_onnx_int8(src, tmp_path / "strided.onnx", calib)
    eager = ck.model.eval()(test).detach()
    snr = {}
    for name in ("one", "strided"):
        session = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        name_in = session.get_inputs()[0].name
        out = torch.cat([torch.from_numpy(session.run(None, {name_in: x[None].numpy()})[0]) for x in test])
        snr[name] = compare_logits(eager, out)["snr_db"]
    assert snr["strided"] > 20 and abs(snr["strided"] - snr["one"]) < 3, snr
