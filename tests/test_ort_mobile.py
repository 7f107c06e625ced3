"""ONNX Runtime Mobile on the trained CI model and real Fashion-MNIST pictures: fixed shapes, the
EP-friendly graph and its coverage gate, the ORT format (.ort) with its operator config, parity."""

import json

import ci_exports
import numpy as np
import onnx
import pytest
import torch

from mbv3_mobile.core.hashing import sha256_file
from mbv3_mobile.pipeline import GateFailure, PipelineError, load_pipeline, run_pipeline

NAME = "mobilenet_v3_small_050_32px"


@pytest.fixture(scope="module")
def onnx_run(trained_ci_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    params = {"checkpoint": str(trained_ci_checkpoint), "out": str(out), **ci_exports.ONNX}
    results = run_pipeline(load_pipeline("onnx"), params, progress=False)
    return results, out / NAME, json.loads((out / NAME / "manifest.json").read_text())


@pytest.fixture(scope="module")
def eval_pictures(trained_ci_checkpoint, fashion_test):
    from mbv3_mobile import load_checkpoint
    from mbv3_mobile.data.datasets import BatchTransform

    ck = load_checkpoint(trained_ci_checkpoint)
    x = BatchTransform(ck.preprocessing)(fashion_test.images[:300])
    with torch.no_grad():
        return ck.model.eval(), x, ck.model.eval()(x)


def _fixed(value_info) -> bool:
    return all(d.HasField("dim_value") for d in value_info.type.tensor_type.shape.dim)


def test_published_fp32_has_static_shapes_and_passes_the_core_ml_ep_gate(onnx_run):
    results, folder, manifest = onnx_run
    model = onnx.load(str(folder / "model.onnx"))
    assert all(_fixed(v) for v in [*model.graph.input, *model.graph.output])
    inferred = onnx.shape_inference.infer_shapes(model)
    assert inferred.graph.value_info and all(_fixed(v) for v in inferred.graph.value_info)
    assert manifest["dynamic_batch"] is False and manifest["input"]["shape"] == [1, 3, 32, 32]
    # the rewrite took out what NNAPI / Core ML NeuralNetwork lack, and every EP takes the graph whole
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"HardSwish", "HardSigmoid", "ReduceMean"} and {"Clip", "GlobalAveragePool"} <= ops
    cov = manifest["ep_coverage"]["fp32"]
    assert cov["figures"]["coreml_ep_node_coverage"] == 1.0 and cov["figures"]["coreml_ep_partitions"] == 1
    assert all(c["partitions"] == 1 and not c["nodes_left_on_cpu"] for c in cov["eps"].values())
    assert [j["verdict"] for j in cov["gate"]] == ["pass", "pass"]
    assert results["coverage[fp32]"].meta["gate"] == "coreml_ep"
    # int8 QDQ: NNAPI takes it whole, the Core ML EP takes no Q/DQ: said so, and not gated
    int8 = manifest["ep_coverage"]["int8"]["eps"]
    assert int8["nnapi"]["node_coverage"] == 1.0 and "ai.onnx:DequantizeLinear" in int8["coreml_nn"]["unsupported_ops"]
    assert "gate" not in results["coverage[int8]"].meta
    assert "not the Core ML EP" in manifest["variants"]["int8"]["targets"]


def test_the_rewrite_is_exact_and_drift_localisation_still_reads_it(onnx_run, eval_pictures):
    from mbv3_mobile.export.onnx.runtime import module_outputs, module_scopes, run_onnx
    from mbv3_mobile.verify.drift import localize

    results, _, _ = onnx_run
    model, x, reference = eval_pictures
    plain, friendly = results["simplify"].out("model"), results["ep_graph"].out("model")
    assert (run_onnx(plain, x[:50]) - run_onnx(friendly, x[:50])).abs().max() <= 1e-5
    assert (run_onnx(friendly, x) - reference).abs().max() <= 1e-4
    report = localize(model, x[:1], module_outputs(friendly, x[:1], module_scopes(results["export"].out("raw"))), 1e-4)
    assert report.module is None and len(report.compared) > 50


def test_ort_files_load_pass_parity_and_match_the_operator_config(onnx_run, eval_pictures):
    from mbv3_mobile.export.onnx.bench_open import open_ort_session
    from mbv3_mobile.export.onnx.mobile import ort_op_counts
    from mbv3_mobile.export.onnx.runners import bench_runtimes, parity_entries
    from mbv3_mobile.export.onnx.runtime import ort_session, run_onnx

    results, folder, manifest = onnx_run
    _, x, reference = eval_pictures
    sha = {f["path"]: f.get("sha256") for f in manifest["files"]}
    fp32 = run_onnx(ort_session(folder / "model.ort"), x)
    assert (fp32 - reference).abs().max() <= 1e-4 and (fp32.argmax(1) == reference.argmax(1)).all()
    int8 = run_onnx(ort_session(folder / "model_int8.ort"), x)
    assert (int8.argmax(1) == reference.argmax(1)).float().mean() >= 0.95
    for v, file in (("fp32", "model.ort"), ("int8", "model_int8.ort")):
        entry = manifest["ort"]["variants"][v]
        assert sha[file] == sha256_file(folder / file) == results[f"verify_ort[{v}]"].meta["measured"]["model.ort"]
        assert entry["file"] == file and all(j["verdict"] == "pass" for j in entry["gate"])
        assert entry["style"] == "runtime" and entry["graph_as_checked"]  # the coverage above is the .ort's
    # the model card lists each .ort beside its .onnx, with its own figures
    card = {r["variant"]: r for r in json.loads((folder / "model_card.json").read_text())["accuracy"]}
    assert card["int8 (.ort)"]["artifact"] == "model_int8.ort" and card["int8 (.ort)"]["top1_agreement"] >= 0.95
    # the reduced build's config names every operator the .ort graphs use
    config = [ln.split(";") for ln in (folder / "required_operators.config").read_text().splitlines() if ";" in ln]
    listed = {f"{d}:{op}" for d, _, ops in config for op in ops.split(",")}
    used = set(ort_op_counts(folder / "model.ort")) | set(ort_op_counts(folder / "model_int8.ort"))
    assert used <= listed and "com.microsoft:FusedConv" in listed  # plus the fusions replayed at load
    # parity rows and bench rows for the .ort
    rows = {c.name: c for c in parity_entries(results)}
    assert {"onnx fp32 .ort (onnxruntime)", "onnx int8 .ort (onnxruntime)"} <= set(rows)
    assert torch.equal(rows["onnx fp32 .ort (onnxruntime)"].run(x[:8]), fp32[:8])
    bench = {r["key"]: r for r in bench_runtimes(results)}
    once, _ = open_ort_session(str(bench["ort_fp32_ortformat"]["file"]), 1, x[:1].numpy())
    assert np.allclose(once(), fp32[:1].numpy(), atol=1e-6) and bench["ort_int8_ortformat"]["precision"] == "int8"
    # the CPU peer for the bench's ratios is the graph before the mobile-EP rewrite
    assert bench["ort_fp32_server"]["file"] == results["simplify"].out("model")


def test_readme_has_android_ios_and_python_snippets(onnx_run):
    _, folder, _ = onnx_run
    readme = (folder / "README.md").read_text()
    for kotlin in ("OrtEnvironment.getEnvironment()", "OnnxTensor.createTensor", "fun preprocess(picture: Bitmap)",
                   "longArrayOf(1, 3, 32, 32)", "session.enable_saved_runtime_optimizations"):
        assert kotlin in readme, kotlin
    for swift in ("ORTSession(env: env", "ORTValue(tensorData:", "appendCoreMLExecutionProvider",
                  "func preprocess(_ picture: CGImage) -> [Float]", "let mean: [Float] = [0.286, 0.286, 0.286]"):
        assert swift in readme, swift
    assert "import onnxruntime as ort" in readme and "deprecated from Android 15" in readme
    assert "| fp32 | Core ML EP (NeuralNetwork) |" in readme and "| ort int8 (.ort, onnxruntime) |" in readme


def test_an_ep_unfriendly_graph_fails_the_coverage_gate_naming_ep_and_ops(trained_ci_checkpoint, tmp_path):
    with pytest.raises(GateFailure) as failure:
        run_pipeline(load_pipeline("onnx"), {"checkpoint": str(trained_ci_checkpoint), "out": str(tmp_path),
                                             "variants": ["fp32"], "parity_images": 500, "ep_friendly": False},
                     progress=False)
    text = str(failure.value)
    assert "coreml_ep_node_coverage" in text and "coreml_ep_partitions" in text
    assert "Core ML EP (NeuralNetwork) leaves" in text and "HardSigmoid" in text and "ReduceMean" in text
    assert "NNAPI leaves" in text and "a change in the exported graph" in text and "--ep-friendly" in text
    assert "Core ML EP (MLProgram) leaves" not in text  # MLProgram has both ops
    assert not any(tmp_path.iterdir())


def test_a_stricter_coverage_gate_in_the_pipeline_file_rejudges_without_rebuilding(onnx_run, trained_ci_checkpoint,
                                                                                   tmp_path, edited_pipelines):
    # gates live in the pipeline files: a copy that also asks NNAPI for a partition count nobody meets
    edited_pipelines("03_onnx.toml", "coreml_ep_partitions = { max = 1 }",
                     "coreml_ep_partitions = { max = 1 }\nnnapi_partitions = { max = 0 }")
    with pytest.raises(GateFailure, match=r"nnapi_partitions = 1 \(must be <= 0\)"):
        run_pipeline(load_pipeline("onnx"), {"checkpoint": str(trained_ci_checkpoint), "out": str(tmp_path / "out"),
                                             "parity_images": 500, "calib_images": 100}, progress=False)
    assert not (tmp_path / "out").exists()


def test_unknown_int8_format_or_ort_style_is_refused_before_any_stage(trained_ci_checkpoint, tmp_path):
    for params, match in (({"int8_format": "qlinear"}, r"--int8-format qlinear: not one of qdq, qoperator"),
                          ({"ort_style": "both"}, r"--ort-style both: not one of runtime, fixed")):
        with pytest.raises(PipelineError, match=match):
            run_pipeline(load_pipeline("onnx"), {"checkpoint": str(trained_ci_checkpoint), "out": str(tmp_path),
                                                 **params}, progress=False)
    assert not any(tmp_path.iterdir())


def test_sensitivity_of_the_int8_graph_reads_every_module_as_itself(onnx_run, eval_pictures, tmp_path):
    # ORT's quantizer hands a dropped Relu's output name to its Conv: that value must not pass as the ReLU's
    from mbv3_mobile.export.onnx.runners import parity_entries
    from mbv3_mobile.verify import sensitivity

    results, _, _ = onnx_run
    model, x, _ = eval_pictures
    int8 = next(c for c in parity_entries(results) if c.name == "onnx int8 (onnxruntime)")
    layers = sensitivity.layer_fidelity(model, int8, x[:2])
    assert len(layers) > 30 and all(f.snr_db > 10 for f in layers), [(f.module, f.snr_db) for f in layers if f.snr_db <= 10]
    worst = sensitivity.worst_entries(layers)
    assert worst and all(f.entered_db > 0 for f in worst) and worst == sorted(worst, key=lambda f: -f.entered_db)
    sensitivity.plot({int8.name: layers}, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG" and "| module | kind |" in sensitivity.markdown({int8.name: layers}, 2)
