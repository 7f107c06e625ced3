"""`mbv3 bench` for LR-ASPP: the random-weight segmentation workloads, the gate tables that judge
them, per-pixel output checks, and a real run on the shipped test segmenter."""

import numpy as np
import pytest
import torch

from mbv3_mobile.crossformat import bench
from mbv3_mobile.crossformat.bench import workload
from mbv3_mobile.crossformat.bench.measure import check_outputs
from mbv3_mobile.pipeline.spec import load_pipeline
from mbv3_mobile.tasks import get_task, load_task_checkpoint
from mbv3_mobile.tasks.segmentation.network import LRASPP
from mbv3_mobile.train.zoo import ensure_model


def test_random_weight_tables_judge_only_checkpoints_that_say_so():
    seg, cls = get_task("segmentation"), get_task("classification")
    tables = load_pipeline("android").gates
    assert seg.gate_table("ptq", False, tables, random_weights=True) == "segmentation.ptq_random"
    assert seg.gate_table("ptq", False, tables) == "segmentation.ptq_unlabelled"
    assert seg.gate_table("ptq", True, tables) == "segmentation.ptq"
    # classifiers have no random-weight table: their workloads keep the label-free gates
    assert cls.gate_table("ptq", False, tables, random_weights=True) == "classification.ptq_unlabelled"
    # the random-weight tables keep the SNR floor (a broken program) and drop only agreement
    for pipeline, table in (("android", "segmentation.ptq_random"), ("onnx", "segmentation.int8_random")):
        rules = load_pipeline(pipeline).gates[table]
        assert [(r.figure, r.op, r.limit) for r in rules] == [("snr_db", ">=", 15.0)], pipeline


def test_task_default_models_replace_only_the_unchanged_list():
    default = ["default", "large-224", "small-224"]
    assert workload.models_for_task(default, "segmentation", default) == ["default", "lraspp-large-512", "lraspp-small-512"]
    assert workload.models_for_task(default, "", default) == default
    assert workload.models_for_task(["lraspp-small-512"], "segmentation", default) == ["lraspp-small-512"]
    assert workload.workload_task("lraspp-large-512") == "segmentation" and workload.workload_task("default") is None
    with pytest.raises(bench.BenchError, match="lraspp-large-512"):
        workload.resolve_models(["huge-999"], "")


def test_segmentation_workload_is_a_random_lraspp_that_tells_a_few_regions_apart(tmp_path, monkeypatch):
    monkeypatch.setitem(workload.WORKLOADS, "lraspp-test-64", ("segmentation", "small", 0.5, 64))
    path = workload.workload_checkpoint("lraspp-test-64", tmp_path)
    assert path.suffix == ".safetensors" and not list(tmp_path.glob("*.tmp*"))
    ck = load_task_checkpoint(path)
    assert isinstance(ck.model, LRASPP) and ck.extra["weights"] == "random" and ck.preprocessing.resolution == 64
    assert ck.labels[0] == "background" and len(ck.labels) == 21
    photos = workload.photo_batch(64)
    with torch.no_grad():
        labels = ck.model.eval()(photos).argmax(1)
    used = torch.bincount(labels.flatten(), minlength=21)
    # the nearest-centroid head: several regions per picture, never more than its classes
    assert 2 <= int((used > 0).sum()) <= workload.SEGMENT_CLASSES
    assert workload.workload_checkpoint("lraspp-test-64", tmp_path) == path  # made once, then reused


class _Fixed:
    def __init__(self, out):
        self.out = out

    def once(self):
        return self.out


def test_per_pixel_outputs_report_their_argmax_agreement():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(1, 4, 8, 8)).astype(np.float32)
    flipped = ref.copy()
    flipped[0, :, 0, 0] = -flipped[0, :, 0, 0]  # one pixel of 64 changes its argmax
    rows = check_outputs({"same": _Fixed(ref), "one_pixel": _Fixed(flipped)}, ref)
    assert rows["same"]["pixel_agreement_vs_eager"] == 1.0 and rows["same"]["same_top1_as_eager"]
    assert rows["one_pixel"]["pixel_agreement_vs_eager"] == pytest.approx(63 / 64)
    assert not rows["one_pixel"]["same_top1_as_eager"]


@pytest.mark.slow
def test_bench_times_every_runtime_of_the_test_segmenter(tmp_path):
    """A short real run on the shipped test segmenter (LR-ASPP Small 0.5 @64): every runtime of the test
    stack timed (LiteRT's converter is not in it: --no-litert), the fp32 ones agreeing with eager on
    every pixel, training throughput skipped with its reason."""
    report, folder = bench.run_bench({"checkpoint": str(ensure_model("segmentation-ci", progress=False)), "quick": True,
                                      "threads": ["1"], "litert": False, "out": str(tmp_path),
                                      "android_params": {"parity_images": 60, "calib_images": 100},
                                      "onnx_params": {"parity_images": 60, "calib_images": 100}}, progress=False)
    assert report["model_key"] == "lraspp-small-64" and (folder / "bench.md").is_file()
    rows = report["latency"]["1"]["rows"]
    assert {"eager_fp32", "pte_fp32", "pte_int8", "ort_fp32", "ort_int8"} <= set(rows)
    for key, row in rows.items():
        assert row["summary"]["p50_ms"] > 0, key
        if report["runtimes"][key]["precision"] == "fp32":
            assert row["pixel_agreement_vs_eager"] == 1.0, key
    assert report["training"]["variants"] == {} and "classifiers only" in report["training"]["skipped"]


@pytest.mark.slow
def test_a_checkpoint_saying_random_weights_is_judged_by_the_random_tables_end_to_end(tmp_path, monkeypatch):
    """A random-weight workload through the ONNX pipeline: its int8 is judged by
    `segmentation.int8_random` (SNR only), its fp32 by the full fp32 table; the manifest says which."""
    import json

    from mbv3_mobile.pipeline import run_pipeline

    monkeypatch.setitem(workload.WORKLOADS, "lraspp-test-64", ("segmentation", "small", 0.5, 64))
    path = workload.workload_checkpoint("lraspp-test-64", tmp_path / "models")
    run_pipeline(load_pipeline("onnx"), {"checkpoint": str(path), "images": "samples", "parity_images": 40,
                                         "calib_images": 40, "out": str(tmp_path / "out")}, progress=False)
    manifest = json.loads(next((tmp_path / "out").glob("*/manifest.json")).read_text())
    assert manifest["pictures"]["int8"]["gate_table"] == "segmentation.int8_random"
    assert manifest["pictures"]["fp32"]["gate_table"] == "segmentation.fp32"
    assert set(manifest["figures"]["int8"]["bounds"]) >= {"snr_db"}
    assert all(j["verdict"] == "pass" for v in ("fp32", "int8") for j in manifest["variants"][v]["gate"])
