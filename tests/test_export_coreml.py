"""Core ML export: the app-ready .mlpackage (spec, metadata), parity gates through the numpy MIL
interpreter on real Fashion-MNIST pictures, compressed variants, zip, ExecuTorch delegate, bad input.

All on the trained CI model (MobileNetV3-Small 0.5 @32): random weights give one class for every
input and prove nothing.
"""

from __future__ import annotations

import copy
import json
import sys
import zipfile
from pathlib import Path

import coremltools as ct  # a hard dependency: a broken install fails here, it is not skipped
import numpy as np
import pytest
import torch

from mbv3_mobile.core.errors import UserError  # noqa: E402
from mbv3_mobile.data.datasets import balanced_subset  # noqa: E402
from mbv3_mobile.data.preprocess import Preprocessing  # noqa: E402
from mbv3_mobile.export.coreml import archive, convert, delegate, runtime  # noqa: E402
from mbv3_mobile.model.checkpoint import load_checkpoint  # noqa: E402
from mbv3_mobile.verify.mil_interpreter import load_program  # noqa: E402

pytestmark = pytest.mark.slow
PER_CLASS = 100  # 1000 real test images: 0.1 accuracy points == 1 image


class ec:  # noqa: N801 - the Core ML export's public surface, one name for the tests
    app_pictures, eager_logits, package_info = runtime.app_pictures, runtime.eager_logits, runtime.package_info
    interpreter_outputs, module_outputs, coreml_predict = (runtime.interpreter_outputs, runtime.module_outputs,
                                                           runtime.coreml_predict)
    export_coreml, zip_mlpackage, CoreMLExportError = convert.export_coreml, archive.zip_mlpackage, convert.CoreMLExportError
    build_executorch_coreml = delegate.build_executorch_coreml


def parity(package, pictures, eager, labels=None) -> dict:
    """The pipeline's comparator on a package's interpreter outputs, its gate table judged as the
    iOS pipeline judges it, plus the classifier's own consistency (classLabel = arg-max)."""
    from mbv3_mobile.pipeline import load_pipeline
    from mbv3_mobile.verify.compare import compare_logits
    from mbv3_mobile.verify.gates import check_gates, gate_verdict

    info = runtime.package_info(package)
    out = runtime.interpreter_outputs(package, pictures)
    ref = torch.from_numpy(np.asarray(eager, dtype=np.float32))
    rep = compare_logits(ref, torch.from_numpy(out["logits"]), None if labels is None else torch.as_tensor(labels))
    names = info["labels"] or out["class_order"]
    rep["class_label_matches_argmax"] = all(lab == names[i] for lab, i in zip(out["labels"], out["logits"].argmax(1)))
    probs = np.exp(eager - eager.max(1, keepdims=True))
    rep["max_abs_dprob"] = float(np.abs(out["probs"] - probs / probs.sum(1, keepdims=True)).max())
    rep["compression"] = info["compression"]
    table = "compressed" if info["compression"] else info["precision"]
    rep["verdict"] = gate_verdict(check_gates(rep, load_pipeline("ios").gates[f"classification.{table}"]))
    return rep


@pytest.fixture(scope="module")
def ck(trained_ci_checkpoint):
    return load_checkpoint(trained_ci_checkpoint)


@pytest.fixture(scope="module")
def data(ck, fashion_test):
    subset = balanced_subset(fashion_test, PER_CLASS, seed=1)
    pictures = ec.app_pictures(subset.images, ck.preprocessing.resolution)
    return {
        "pictures": pictures,
        "labels": subset.labels.numpy(),
        "eager": ec.eager_logits(ck.model, ck.preprocessing, pictures),
    }


@pytest.fixture(scope="module")
def packages(ck, tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml")
    built = {}
    for name, kwargs in {
        "fp32": {"precision": "fp32"},
        "fp16": {"precision": "fp16"},
        "fp16_int8": {"compression": "int8"},
        "fp16_palette6": {"compression": "palette6"},
    }.items():
        built[name] = ec.export_coreml(ck.model, ck.preprocessing, ck.labels, out / f"ci_{name}.mlpackage", **kwargs)
    return built


def _report(name, packages, data):
    rep = parity(packages[name].path, data["pictures"], data["eager"], data["labels"])
    print(f"\n[coreml {name}] " + json.dumps({k: v for k, v in rep.items() if k not in ("bounds", "counts")}))
    return rep


# ---------------------------------------------------------------- the package an app drops in


def test_package_is_an_app_ready_classifier(ck, packages):
    spec = ct.models.MLModel(str(packages["fp16"].path), skip_model_load=True).get_spec()
    desc = spec.description
    r = ck.preprocessing.resolution

    # input: an RGB ImageType at the training resolution
    (inp,) = desc.input
    assert inp.name == "image" and inp.type.WhichOneof("Type") == "imageType"
    assert (inp.type.imageType.width, inp.type.imageType.height) == (r, r)
    assert inp.type.imageType.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB

    # ImageType scale/bias live at the top of an ML program: 1/255 and zero bias ...
    program = load_program(packages["fp16"].path)
    pre = program.image_preprocessing()
    assert pre["scale"] == pytest.approx(1 / 255, rel=1e-6)
    assert pre["bias"] == [0.0, 0.0, 0.0]
    # ... followed by the exact per-channel (x - mean) / std inside the graph
    first = program.compute_ops()[:6]
    sub = next(op for op in first if op.type == "sub")
    mean = np.asarray(program.constants[sub.args["y"][1]], dtype=np.float32).reshape(-1)
    np.testing.assert_allclose(mean, ck.preprocessing.mean, rtol=1e-3)  # fp16 constants
    mul = next(op for op in first if op.type == "mul" and op.args["x"][1] == sub.name)
    inv_std = np.asarray(program.constants[mul.args["y"][1]], dtype=np.float32).reshape(-1)
    np.testing.assert_allclose(inv_std, 1 / np.asarray(ck.preprocessing.std), rtol=1e-3)

    # outputs: a classifier (classLabel + probabilities dict) and the raw logits
    outputs = {o.name: o.type for o in desc.output}
    assert set(outputs) == {"classLabel", "classLabel_probs", "logits"}
    assert outputs["classLabel"].WhichOneof("Type") == "stringType"
    assert outputs["classLabel_probs"].WhichOneof("Type") == "dictionaryType"
    assert outputs["logits"].multiArrayType.shape == [1, len(ck.labels)]
    assert desc.predictedFeatureName == "classLabel" and desc.predictedProbabilitiesName == "classLabel_probs"
    classify = next(op for op in program.ops if op.type == "classify")
    assert classify.args["classes"][1] == list(ck.labels)

    # metadata
    meta = desc.metadata
    assert meta.author and meta.license and meta.versionString and meta.shortDescription
    assert all(f.shortDescription for f in list(desc.input) + list(desc.output))
    ud = dict(meta.userDefined)
    assert Preprocessing.from_dict(json.loads(ud["mbv3.preprocessing"])) == ck.preprocessing
    assert json.loads(ud["mbv3.labels"]) == list(ck.labels)
    assert ud["mbv3.precision"] == "fp16" and ud["mbv3.deployment_target"] == "iOS16"
    assert spec.specificationVersion == ct.target.iOS16.value

    # the program is really fp16 inside, the fp32 one really fp32
    fp16_types = {s.dtype for op in program.compute_ops() for s in op.outputs}
    assert "fp16" in fp16_types
    fp32_types = {s.dtype for op in load_program(packages["fp32"].path).compute_ops() for s in op.outputs}
    assert "fp16" not in fp32_types
    print("\n[coreml ops fp16] " + json.dumps(packages["fp16"].ops))


def test_export_result_and_source_map(packages):
    res = packages["fp16"]
    assert res.size_bytes > 0 and res.seconds > 0 and res.ops["conv"] > 0
    assert res.to_dict()["path"].endswith(".mlpackage") and "source_map" not in res.to_dict()
    sm = res.source_map
    program = load_program(res.path)
    names = {op.name for op in program.compute_ops()}
    assert set(sm) <= names
    mapped = [v for v in sm.values() if v["module"]]
    assert len(mapped) >= 0.9 * len(sm)
    assert any(v["module"].startswith("features.") for v in mapped)
    assert sm["logits"]["module"] == "classifier.3"


# ---------------------------------------------------------------- numeric gates


def test_fp32_program_matches_eager(ck, packages, data):
    rep = _report("fp32", packages, data)
    assert rep["images"] == 10 * PER_CLASS
    assert rep["reference_top1"] > 0.6, "the CI model should be trained"
    assert rep["top1_agreement"] == 1.0
    assert rep["max_abs_dlogit"] <= 1e-4
    assert rep["class_label_matches_argmax"] is True
    assert rep["max_abs_dprob"] < 1e-5
    assert rep["verdict"] == "pass"


def test_fp16_program_accuracy_drop(packages, data):
    rep = _report("fp16", packages, data)
    assert rep["top1_drop"] <= 0.001
    assert rep["verdict"] in ("pass", "inconclusive")  # 1000 pictures resolve a 0.1 pt gate only at ~no flips
    # fp16 rounding is really emulated: the program drifts from eager, but only a little
    assert 1e-4 < rep["max_abs_dlogit"] < 0.5
    assert rep["top1_agreement"] >= 0.98


@pytest.mark.parametrize("variant, op", [("fp16_int8", "constexpr_affine_dequantize"),
                                         ("fp16_palette6", "constexpr_lut_to_dense")])
def test_compressed_variants_load_back_and_report(packages, data, variant, op):
    res = packages[variant]
    assert res.ops.get(op, 0) > 0 and res.compressed_weights == res.ops[op]
    assert res.size_bytes < packages["fp16"].size_bytes
    info = ec.package_info(res.path)
    assert info["compression"] == variant.split("_", 1)[1]
    rep = _report(variant, packages, data)
    assert rep["compression"] == info["compression"]
    assert rep["top1_agreement"] >= 0.95 and abs(rep["top1_drop"]) < 0.03
    print(f"[coreml {variant}] size {res.size_bytes} B vs fp16 {packages['fp16'].size_bytes} B")


def test_per_channel_normalisation_is_exact_for_unequal_std(ck, data, tmp_path):
    """ImageType has one scale for all channels; the in-graph normalisation must honour per-channel std."""
    pre = Preprocessing(resolution=ck.preprocessing.resolution, mean=(0.2, 0.3, 0.45), std=(0.25, 0.4, 0.3))
    pkg = tmp_path / "unequal.mlpackage"
    ec.export_coreml(ck.model, pre, ck.labels, pkg, precision="fp32")
    pictures = data["pictures"][:200]
    eager = ec.eager_logits(ck.model, pre, pictures)
    rep = parity(pkg, pictures, eager)
    assert rep["top1_agreement"] == 1.0
    assert rep["max_abs_dlogit"] <= 1e-4


def _localize(ck, package, source_map, picture):
    """Drift report for one uint8 RGB picture (R, R, 3) of a package vs the eager model."""
    from mbv3_mobile.graph import last_per_module
    from mbv3_mobile.verify.drift import localize

    feed = picture.transpose(2, 0, 1)[None].astype(np.float32)
    x = ck.preprocessing.normalize(torch.from_numpy(feed) / 255.0)
    return localize(ck.model, x, last_per_module(ec.module_outputs(package, feed, source_map)), 1e-4)


def test_drift_localisation_on_broken_exports(ck, packages, data, tmp_path):
    """Deliberately broken exports, fp32: one depthwise conv's weights scaled (a converter bug)
    must be named as block 7's depthwise conv; a wrong normalisation folded into the package must
    be named at the first layer; the intact package departs nowhere."""
    picture = data["pictures"][3]
    clean = _localize(ck, packages["fp32"].path, packages["fp32"].source_map, picture)
    assert clean.module is None and len(clean.compared) > 50, clean.table()

    broken = copy.deepcopy(ck.model)
    with torch.no_grad():
        broken.features[7].block[1][0].weight.mul_(1.05)
    bad = ec.export_coreml(broken, ck.preprocessing, ck.labels, tmp_path / "bad_weight.mlpackage", precision="fp32")
    report = _localize(ck, bad.path, bad.source_map, picture)
    assert report.module is not None and report.module.startswith("features.7.block.1"), report.table()

    pre = ck.preprocessing
    wrong = Preprocessing(resolution=pre.resolution, mean=pre.mean, std=tuple(v * 1.1 for v in pre.std))
    bad = ec.export_coreml(ck.model, wrong, ck.labels, tmp_path / "bad_norm.mlpackage", precision="fp32")
    report = _localize(ck, bad.path, bad.source_map, picture)
    assert report.module is not None and report.module.startswith("features.0."), report.table()


# ---------------------------------------------------------------- zip and ExecuTorch delegate


def test_same_model_same_package_bytes(ck, packages, tmp_path):
    again = ec.export_coreml(ck.model, ck.preprocessing, ck.labels, tmp_path / "again.mlpackage", precision="fp32")
    first = packages["fp32"].path
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again.path) for p in again.path.rglob("*") if p.is_file())
    assert Path("Manifest.json") in files and not any("debug_handle" in str(f) for f in files)
    for rel in files:
        assert (first / rel).read_bytes() == (again.path / rel).read_bytes(), rel


def test_zip_is_deterministic_and_unpacks_to_the_package(packages, tmp_path):
    pkg = packages["fp16"].path
    a = ec.zip_mlpackage(pkg, tmp_path / "a.zip")
    b = ec.zip_mlpackage(pkg, tmp_path / "b.zip")
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(a) as zf:
        names = zf.namelist()
        assert names == sorted(names) and all(n.startswith(pkg.name + "/") for n in names)
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in zf.infolist())
        zf.extractall(tmp_path / "unz")
    back = ct.models.MLModel(str(tmp_path / "unz" / pkg.name), skip_model_load=True).get_spec()
    assert back.SerializeToString() == ct.models.MLModel(str(pkg), skip_model_load=True).get_spec().SerializeToString()


def test_executorch_coreml_delegate_builds(ck, tmp_path):
    out = tmp_path / "ci_coreml.pte"
    rep = ec.build_executorch_coreml(ck.model, out, resolution=ck.preprocessing.resolution)
    print(f"\n[executorch coreml] {json.dumps(rep)}")
    assert out.is_file() and out.read_bytes()[4:8] == b"ET12"
    assert rep["delegate_subgraphs"] == 1 and rep["delegated_nodes"] > 100
    assert rep["non_delegated_nodes"] <= 2 and rep["runs_here"] is False


# ---------------------------------------------------------------- bad input: clear errors, nothing written


def _nothing_written(folder: Path) -> None:
    assert list(folder.iterdir()) == [], f"left behind: {list(folder.iterdir())}"


def test_label_count_must_match_the_head(ck, tmp_path):
    with pytest.raises(ec.CoreMLExportError, match=r"9 class labels given but the model's head has 10 outputs"):
        ec.export_coreml(ck.model, ck.preprocessing, ck.labels[:9], tmp_path / "m.mlpackage")
    with pytest.raises(ec.CoreMLExportError, match="duplicate class labels"):
        ec.export_coreml(ck.model, ck.preprocessing, ["a"] * 10, tmp_path / "m.mlpackage")
    _nothing_written(tmp_path)
    assert issubclass(ec.CoreMLExportError, UserError)


class _Digamma(torch.nn.Module):
    def forward(self, x):
        return torch.digamma(x.abs() + 1)


def test_non_convertible_op_is_named_with_its_module(ck, tmp_path):
    model = copy.deepcopy(ck.model)
    model.classifier[1] = _Digamma()
    with pytest.raises(ec.CoreMLExportError) as err:
        ec.export_coreml(model, ck.preprocessing, ck.labels, tmp_path / "m.mlpackage")
    msg = str(err.value)
    assert "digamma" in msg and "classifier.1" in msg and "nothing was written" in msg
    _nothing_written(tmp_path)


def test_deployment_target_too_old(ck, tmp_path):
    with pytest.raises(ec.CoreMLExportError, match=r"iOS14 is too old.*iOS15"):
        ec.export_coreml(ck.model, ck.preprocessing, ck.labels, tmp_path / "m.mlpackage", deployment_target="iOS14")
    with pytest.raises(ec.CoreMLExportError, match=r"'int4_block'.*needs deployment target iOS18\+.*targets iOS16"):
        ec.export_coreml(ck.model, ck.preprocessing, ck.labels, tmp_path / "m.mlpackage", compression="int4_block")
    with pytest.raises(ec.CoreMLExportError, match="unknown Core ML deployment target"):
        ec.export_coreml(ck.model, ck.preprocessing, ck.labels, tmp_path / "m.mlpackage", deployment_target="android")
    with pytest.raises(ec.CoreMLExportError, match="unknown precision"):
        ec.export_coreml(ck.model, ck.preprocessing, ck.labels, tmp_path / "m.mlpackage", precision="int8")
    _nothing_written(tmp_path)


def test_ios18_int4_block_variant(ck, data, tmp_path):
    """The iOS18 compression ops (constexpr_blockwise_shift_scale) run through the interpreter."""
    res = ec.export_coreml(ck.model, ck.preprocessing, ck.labels, tmp_path / "i4.mlpackage",
                           deployment_target="iOS18", compression="int4_block")
    assert res.ops.get("constexpr_blockwise_shift_scale", 0) > 0
    rep = parity(res.path, data["pictures"], data["eager"], data["labels"])
    print(f"\n[coreml ios18 int4_block] size {res.size_bytes} B top-1 agreement {rep['top1_agreement']:.4f}")
    assert rep["top1_agreement"] >= 0.9


# ---------------------------------------------------------------- macOS: the real Core ML runtime


@pytest.mark.macos
@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML predict needs macOS: MLModel.predict is unavailable on "
                    f"{sys.platform}; the numpy MIL interpreter tests above stand in for it")
@pytest.mark.parametrize("variant", ["fp32", "fp16", "fp16_int8"])
def test_coreml_predict_matches_interpreter(packages, data, variant):
    pictures = data["pictures"][:100]
    real = ec.coreml_predict(packages[variant].path, pictures)
    ours = ec.interpreter_outputs(packages[variant].path, pictures)
    diff = np.abs(real["logits"] - ours["logits"]).max()
    agree = (real["logits"].argmax(1) == ours["logits"].argmax(1)).mean()
    print(f"\n[coreml predict vs interpreter {variant}] max|dlogit| {diff:.3g}, top-1 agreement {agree:.3f}")
    assert agree >= 0.99
    assert diff <= (1e-3 if variant == "fp32" else 0.25)
