"""Model cards built from a real published ONNX folder of the trained CI model."""

import json
import shutil

import ci_exports
import pytest

from mbv3_mobile.card import CARD_JSON, CARD_MD, ModelCardError, write_card
from mbv3_mobile.core.hashing import sha256_file
from mbv3_mobile.pipeline import load_pipeline, run_pipeline

NAME = "mobilenet_v3_small_050_32px"


@pytest.fixture(scope="module")
def published(trained_ci_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    params = {"checkpoint": str(trained_ci_checkpoint), "out": str(out), **ci_exports.ONNX}
    run_pipeline(load_pipeline("onnx"), params, progress=False)
    return out / NAME


@pytest.fixture
def folder(published, tmp_path):
    """A private copy, so a test that refreshes the card leaves the published one as it was."""
    return shutil.copytree(published, tmp_path / NAME)


def _card(folder):
    return json.loads((folder / CARD_JSON).read_text())


def _parity_report(manifest: dict, path, model=None) -> dict:
    # The shape `mbv3 parity` writes (rows keyed by format); figures taken from the manifest.
    rows = {f"onnx {v} (onnxruntime)": {**f, "format": "onnx", "pipeline": "onnx", "precision": v, "gate": "pass",
                                         "note": ""} for v, f in manifest["figures"].items()}
    rows["pte fp32 (ExecuTorch)"] = {"format": "executorch", "pipeline": "android", "precision": "fp32",
                                     "skipped": "not exported in this test"}
    data = {"model": model or manifest["model"]["name"], "images": 500, "data": "fashion-mnist test",
            "params": {"pictures": 500},
            "reference_top1": manifest["figures"]["fp32"]["reference_top1"], "gates": {}, "rows": rows, "failures": []}
    path.write_text(json.dumps(data))
    return data


def _harness_results(folder, tmp_path, target="adb"):
    from mobile_harness.bench import BenchPlan, add_measurement, new_results

    res = new_results(target, BenchPlan(threads=["1", "4"], rounds=2, iters=3), serial="R58M123",
                      device={"manufacturer": "samsung", "model": "SM-S911B", "soc": "SM8550", "abi": "arm64-v8a", "cpus": 8})
    for threads, lat in ((1, [4.0, 4.2, 4.1]), (4, [1.9, 2.0, 2.1])):
        rounds = [{"load_ms": 12.0, "first_inference_ms": 6.0, "latencies_ms": lat, "threads": threads}] * 2
        add_measurement(res, variant="model.onnx", model=str(folder / "model.onnx"), runtime="native", threads=threads,
                        rounds=rounds)
    path = tmp_path / f"{target}_results.json"
    path.write_text(json.dumps(res))
    return path, res


def test_published_card_states_the_manifest(published, trained_ci_checkpoint, capsys):
    manifest = json.loads((published / "manifest.json").read_text())
    card = _card(published)
    md = (published / CARD_MD).read_text()
    assert card["schema"] == "mbv3-model-card/1" and card["format"] == "onnx"
    # The card is written after the manifest and pins it; the manifest does not list the card.
    assert card["manifest"]["sha256"] == sha256_file(published / "manifest.json")
    assert not {CARD_JSON, CARD_MD} & {f["path"] for f in manifest["files"]}
    m = card["model"]
    assert (m["params"], m["macs"], m["arch"], m["width"], m["resolution"]) == (
        manifest["model"]["params"], manifest["model"]["macs"], "small", 0.5, 32)
    assert f"{m['params']:,}" in md and f"{m['macs'] / 1e6:.2f} M" in md
    # Accuracy: one row per variant, figures equal to the manifest's, each with its file and runtime.
    rows = {a["variant"]: a for a in card["accuracy"]}
    # (an ONNX folder also ships each variant as .ort, verified on its own: a row each)
    assert set(rows) == set(manifest["figures"]) | {f"{v} (.ort)" for v in manifest["ort"]["variants"]}
    assert set(manifest["figures"]) == {"fp32", "int8"}
    assert rows["int8 (.ort)"]["top1"] == manifest["ort"]["variants"]["int8"]["figures"]["top1"]
    for v, fig in manifest["figures"].items():
        for k in ("images", "top1", "reference_top1", "top1_drop", "top1_agreement", "max_abs_dlogit", "min_cosine", "bounds"):
            assert rows[v][k] == fig[k], (v, k)
    assert rows["fp32"]["artifact"] == "model.onnx" and rows["int8"]["artifact"] == "model_int8.onnx"
    assert f"{100 * manifest['figures']['int8']['top1']:.2f}" in md
    # Sizes are the files' real sizes; every published file (and the manifest) is listed.
    sizes = {s["path"]: s["bytes"] for s in card["sizes"]}
    on_disk = {p.name: p.stat().st_size for p in published.iterdir() if p.name not in (CARD_JSON, CARD_MD)}
    assert sizes == on_disk
    # Every figure says how to reproduce it; the export command is the one that made this folder.
    export = card["export"]["reproduce"]
    assert export.startswith("nox -s export_onnx -- ") and card["export"]["exact"]
    for arg in (f"--checkpoint {trained_ci_checkpoint}", "--parity-images 500", "--calib-images 100", f"--out {published.parent}"):
        assert arg in export
    figures = [m, *card["accuracy"], *card["sizes"], card["training"]]
    assert all(f["reproduce"] and f["reproduce"].startswith("nox -s ") for f in figures)
    assert card["training"]["reproduce"] == "nox -s train -- --recipe ci"
    # The params/MACs command really reproduces the figures.
    import shlex

    from mbv3_mobile.cli import main

    info_args = shlex.split(m["reproduce"].removeprefix("nox -s info -- "))
    assert main(["info", *info_args, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["params"], info["macs"]) == (m["params"], m["macs"])
    assert f"`{export}`" in md
    # Training: the CI recipe, from the checkpoint's metadata.
    t = card["training"]
    assert t["status"] == "known" and t["recipe"] == "ci" and t["config"]["max_train_images"] == 20000
    assert "Fashion-MNIST" in t["data"] and 0.5 < t["val_top1"] <= 1
    # Nothing measured yet: no latency is invented.
    for section in ("host", "devices"):
        assert card["latency"][section] == {"status": "not measured", "rows": [], "sources": []}
    assert "Host: not measured" in md and "Devices (adb / iOS): not measured" in md
    assert card["parity"] is None and "Not run for this card" in md
    assert card["versions"]["versions"] == manifest["versions"]


def test_parity_and_harness_results_show_up_and_survive_a_later_refresh(folder, tmp_path):
    manifest = json.loads((folder / "manifest.json").read_text())
    parity = _parity_report(manifest, tmp_path / "parity.json")
    harness, res = _harness_results(folder, tmp_path)
    card = write_card(folder, parity=tmp_path / "parity.json", harness=[harness])
    rows = {r["row"]: r for r in card["parity"]["rows"]}
    assert rows["onnx int8 (onnxruntime)"]["top1"] == parity["rows"]["onnx int8 (onnxruntime)"]["top1"]
    assert rows["pte fp32 (ExecuTorch)"]["skipped"] == "not exported in this test"
    assert card["parity"]["reproduce"].startswith("nox -s parity -- ") and "--formats android,onnx --pictures 500" in card["parity"]["reproduce"]
    dev = card["latency"]["devices"]
    assert dev["status"] == "measured" and [r["threads"] for r in dev["rows"]] == [1, 4]
    assert [r["p50_ms"] for r in dev["rows"]] == [m["summary"]["p50_ms"] for m in res["measurements"]]
    assert dev["rows"][0]["device"].startswith("samsung, SM-S911B, SM8550")
    assert dev["rows"][0]["reproduce"].startswith("nox -s harness -- --target adb --serial R58M123 --model ")
    assert card["latency"]["host"]["status"] == "not measured" and card["reproduce"]["harness"] == dev["rows"][0]["reproduce"]
    md = (folder / CARD_MD).read_text()
    assert "| onnx int8 (onnxruntime) | int8 |" in md and "skipped: not exported in this test" in md
    assert "samsung, SM-S911B" in md and "Host: not measured" in md
    # A later refresh with host figures only keeps the parity matrix and the device latency.
    host, _ = _harness_results(folder, tmp_path, target="host")
    again = write_card(folder, harness=[host])
    assert again["parity"] == card["parity"] and again["latency"]["devices"] == dev
    assert again["latency"]["host"]["status"] == "measured" and again["latency"]["host"]["rows"][0]["target"] == "host"


def test_bench_json_is_read_by_its_documented_keys(folder, tmp_path):
    bench = {"schema": "mbv3-bench/1", "host": {"cpu": "test-cpu", "cores": 2},
             "command": ["nox", "-s", "bench", "--", str(folder)],
             "rows": [{"artifact": str(folder / "model_int8.onnx"), "runtime": "onnxruntime", "threads": 2,
                       "p50_ms": 0.8, "p90_ms": 0.9, "peak_rss_mb": 61.5},
                      {"artifact": "/elsewhere/other.pte", "runtime": "executorch", "threads": 2, "p50_ms": 1.0}]}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    card = write_card(folder, bench=tmp_path / "bench.json")
    host = card["latency"]["host"]
    assert host["status"] == "measured" and len(host["rows"]) == 1 and host["sources"][0]["other_files_skipped"] == 1
    row = host["rows"][0]
    assert (row["artifact"], row["matched_by"], row["p50_ms"], row["peak_rss_mb"]) == ("model_int8.onnx", "sha256", 0.8, 61.5)
    assert row["reproduce"] == f"nox -s bench -- {folder}"
    md = (folder / CARD_MD).read_text()
    assert "- host: cpu test-cpu, cores 2" in md and "| host | this host | model_int8.onnx | onnxruntime | 2 | 0.800 | 0.900 |" in md
    assert card["reproduce"]["bench"] == row["reproduce"]


def test_a_real_parity_report_refreshes_the_card_of_the_folder_it_used(trained_ci_checkpoint, tmp_path):
    from mbv3_mobile.card import refresh_cards
    from mbv3_mobile.crossformat.parity import run_parity

    # The export test's ONNX parameters, so the pipeline is cached; `run_parity` publishes the folder it compares.
    # 200 pictures cannot resolve the 0.5-pt int8 gate: "warn" lets the report through as inconclusive
    _, report = run_parity({"checkpoint": str(trained_ci_checkpoint), "formats": ["onnx"], "pictures": 200, "out": str(tmp_path),
                            "inconclusive": "warn", "onnx_params": {"parity_images": 500, "calib_images": 100}},
                           progress=False)
    folder = tmp_path / "artifacts" / "onnx" / NAME
    assert refresh_cards([folder], parity=report) == [folder / CARD_MD]
    parity = json.loads((report / "parity.json").read_text())
    card = _card(folder)
    assert [r["row"] for r in card["parity"]["rows"]] == list(parity["rows"])
    for row in card["parity"]["rows"]:
        src = parity["rows"][row["row"]]
        assert (row["top1"], row["max_abs_dlogit"], row["gate"]) == (src["top1"], src["max_abs_dlogit"], src["gate"])
    assert card["parity"]["reproduce"] == f"nox -s parity -- --checkpoint {trained_ci_checkpoint} --formats onnx --pictures 200"
    assert "| onnx int8 (onnxruntime) | int8 |" in (folder / CARD_MD).read_text()


def test_mbv3_bench_report_rows_match_this_folder_by_content(folder, tmp_path):
    from mobile_harness.stats import reliability_flags, summarize_rounds

    # `mbv3 bench` times the pipeline cache's copies: other names, the same bytes.
    cached = tmp_path / "cache_quantize_int8.onnx"
    shutil.copy2(folder / "model_int8.onnx", cached)
    (tmp_path / "model.safetensors").write_bytes(b"not shipped")

    def row(lat):
        rounds = [{"latencies_ms": r} for r in lat]
        summary = summarize_rounds(rounds)
        return {"summary": summary, "flags": reliability_flags(summary, rounds), "rounds_ms": lat}

    block = {"rows": {"eager_fp32": row([[2.0, 2.1], [2.0, 2.2]]), "ort_int8": row([[1.0, 1.1], [1.0, 1.05]]),
                      "pte_fp32": row([[1.5, 1.5], [1.6, 1.5]])},
             "ratio_vs_eager": {"eager_fp32": 1.0, "ort_int8": 0.5, "pte_fp32": 0.75}}
    report = {"schema": "mbv3-bench/1", "baseline": "eager_fp32", "cores": 2, "threads": [1, 2],
              "plan": {"warmup": 20, "rounds": 7, "iters": 40, "quick": False}, "peak": {"cpu": "Test CPU @ 2GHz"},
              "platform": "Linux-test", "latency": {"1": block},
              "runtimes": {"eager_fp32": {"label": "eager PyTorch fp32", "file": str(tmp_path / "model.safetensors")},
                           "ort_int8": {"label": "ONNX Runtime int8 (QDQ)", "file": str(cached)},
                           "pte_fp32": {"label": ".pte XNNPACK fp32", "file": "/gone/model.pte"}},
              "probes": {"ort_int8": {"load_ms": 15.0, "first_inference_ms": 3.0, "peak_rss_mb": 80.5}}}
    (tmp_path / "bench.json").write_text(json.dumps(report))
    card = write_card(folder, bench=tmp_path)  # a report folder holding bench.json
    host = card["latency"]["host"]
    assert [(r["runtime"], r["artifact"]) for r in host["rows"]] == [
        ("eager PyTorch fp32", "(eager PyTorch fp32 reference, not shipped)"), ("ONNX Runtime int8 (QDQ)", "model_int8.onnx")]
    ort = host["rows"][1]
    assert ort["matched_by"] == "sha256" and ort["p50_ms"] == block["rows"]["ort_int8"]["summary"]["p50_ms"]
    assert (ort["peak_rss_mb"], ort["load_ms"], ort["ratio_vs_baseline"], ort["threads"]) == (80.5, 15.0, 0.5, 1)
    assert host["sources"][0]["other_files_skipped"] == 1  # the .pte row: not this folder's
    assert ort["reproduce"] == f"nox -s bench -- --checkpoint {card['export']['params']['checkpoint']} --threads 1,2 " \
        "--warmup 20 --rounds 7 --iters 40"
    assert "Test CPU @ 2GHz, 2 usable cores" in ort["device"]
    assert "| ONNX Runtime int8 (QDQ) | 1 |" in (folder / CARD_MD).read_text()


def test_bad_inputs_are_clear_errors_and_leave_the_card_as_it_was(folder, tmp_path):
    before = {n: (folder / n).read_bytes() for n in (CARD_JSON, CARD_MD)}
    (tmp_path / "bad.json").write_text('{"rows": ')
    with pytest.raises(ModelCardError, match="not readable JSON"):
        write_card(folder, parity=tmp_path / "bad.json")
    (tmp_path / "shape.json").write_text(json.dumps({"model": "x", "images": 5, "rows": {"a": {"precision": "fp32"}}}))
    with pytest.raises(ModelCardError, match="row 'a' is malformed"):
        write_card(folder, parity=tmp_path / "shape.json")
    manifest = json.loads((folder / "manifest.json").read_text())
    _parity_report(manifest, tmp_path / "other.json", model="mobilenet_v3_large_100")
    with pytest.raises(ModelCardError, match="is for model 'mobilenet_v3_large_100'"):
        write_card(folder, parity=tmp_path / "other.json")
    harness, res = _harness_results(folder, tmp_path)
    for m in res["measurements"]:
        m["model"] = "/phone/other_model.pte"
    harness.write_text(json.dumps(res))
    with pytest.raises(ModelCardError, match="measured none of this folder's files"):
        write_card(folder, harness=[harness])
    with pytest.raises(ModelCardError, match="does not exist"):
        write_card(folder, bench=tmp_path / "missing.json")
    assert {n: (folder / n).read_bytes() for n in (CARD_JSON, CARD_MD)} == before
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    # A file changed after publishing: the card would describe something else.
    (folder / "labels.txt").write_text("changed\n")
    with pytest.raises(ModelCardError, match="changed after publishing"):
        write_card(folder)
    del manifest["figures"]["int8"]["top1"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelCardError, match="figures of 'int8' lack top1"):
        write_card(folder)
    assert {n: (folder / n).read_bytes() for n in (CARD_JSON, CARD_MD)} == before


def test_folder_without_manifest_writes_nothing(tmp_path):
    with pytest.raises(ModelCardError, match="no manifest.json"):
        write_card(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cli_refreshes_and_reports_errors(folder, tmp_path, capsys):
    from mbv3_mobile.cli import main

    manifest = json.loads((folder / "manifest.json").read_text())
    _parity_report(manifest, tmp_path / "parity.json")
    assert main(["card", str(folder), "--parity", str(tmp_path)]) == 0  # a report folder holding parity.json
    assert "parity yes" in capsys.readouterr().out and _card(folder)["parity"]["images"] == 500
    assert main(["card", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_card_without_previous_card_reconstructs_the_export_and_says_so(folder):
    for n in (CARD_JSON, CARD_MD):
        (folder / n).unlink()
    card = write_card(folder)
    ex = card["export"]
    assert not ex["exact"] and "reconstructed from manifest.json" in ex["note"]
    # The source is the zoo's "ci" model, so the portable command names the recipe, not a cache path.
    assert "--recipe ci" in ex["reproduce"] and "--parity-images 500" in ex["reproduce"]
    assert card["training"]["recipe"] == "ci"  # read again from the source checkpoint (same sha256)
    assert "reconstructed from manifest.json" in (folder / CARD_MD).read_text()


def test_external_checkpoint_without_training_metadata_reads_unknown(folder, tmp_path):
    import torch

    from mbv3_mobile.model.checkpoint import load_checkpoint

    # A torchvision-style .pth of the same weights: no preprocessing, labels or training metadata inside.
    ck = load_checkpoint(json.loads((folder / "manifest.json").read_text())["source_checkpoint"]["path"])
    pth = tmp_path / "external.pth"
    torch.save(ck.model.state_dict(), pth)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["source_checkpoint"] = {"path": str(pth), "sha256": sha256_file(pth), "format": "torchvision"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for n in (CARD_JSON, CARD_MD):
        (folder / n).unlink()
    card = write_card(folder)
    t = card["training"]
    assert (t["status"], t["data"], t["reproduce"]) == ("unknown", "unknown", None)
    assert "torchvision format) carries no training metadata" in t["reason"]
    assert f"--checkpoint {pth}" in card["export"]["reproduce"]
    assert "Training data and recipe: **unknown**" in (folder / CARD_MD).read_text()
    # Moved away: still unknown, and the card says why.
    pth.unlink()
    assert "no longer at its recorded path" in write_card(folder, previous={})["training"]["reason"]
