"""Training on real Fashion-MNIST: a short run learns, torchrun/DDP ranks agree, a SIGKILLed run
resumes onto the uninterrupted run's exact weights, and fine-tuning swaps the head."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_data import make_image_tree

from mbv3_mobile.cli import main
from mbv3_mobile.core.errors import UserError
from mbv3_mobile.data.datasets import FASHION_MNIST_LABELS, FASHION_MNIST_MEAN
from mbv3_mobile.model.checkpoint import load_checkpoint
from mbv3_mobile.train.distributed import state_fingerprint
from mbv3_mobile.train.loop import STATE_FILE, TrainConfig, train

TORCHRUN = Path(sys.executable).with_name("torchrun")
# Tiny runs: MobileNetV3-Small 0.35 at 32 px on a 640-image balanced subset, 10 steps per epoch.
TINY = ["--width", "0.35", "--max-train-images", "640", "--batch-size", "64", "--val-fraction", "0.02",
        "--bn-recalibration-images", "256", "--random-erasing", "0.5", "--no-progress"]

# Runs the real CLI; with HANG_AT_STEP set, the Nth optimizer step writes HANG_MARKER and blocks, so
# the test can SIGKILL the process at a known point in the middle of an epoch.
DRIVER = """
import os, sys, time
from pathlib import Path
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
torch.use_deterministic_algorithms(True)
hang_at, steps = int(os.environ.get("HANG_AT_STEP", "0")), 0
def hook(opt, args, kwargs):
    global steps
    steps += 1
    if steps == hang_at:
        Path(os.environ["HANG_MARKER"]).write_text(str(steps))
        time.sleep(600)
register_optimizer_step_post_hook(hook)
from mbv3_mobile.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env(**extra) -> dict:
    # One thread per process: bit-reproducible and polite on a shared 2-core machine.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _driver(tmp_path: Path) -> Path:
    path = tmp_path / "driver.py"
    path.write_text(DRIVER)
    return path


def _run_cli(driver: Path, args: list[str], **env) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, str(driver), *args], capture_output=True, text=True, env=_env(**env),
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_short_training_run_learns(tmp_path, fashion_test):
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), width=0.5, max_train_images=3000, epochs=2, batch_size=64,
                      lr=1e-2, warmup_epochs=0.5, augment=False, val_fraction=0.04, bn_recalibration_images=1024,
                      progress=False)
    result = train(cfg)
    m = result.metrics
    assert [row["epoch"] for row in m] == [1, 2]
    assert m[1]["train_loss"] < m[0]["train_loss"] and m[1]["val_loss"] < m[0]["val_loss"]
    assert m[1]["val_top1"] > 0.6  # chance is 0.1

    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.labels == list(FASHION_MNIST_LABELS) and ckpt.config.num_classes == 10
    assert ckpt.preprocessing.resolution == 32 and ckpt.preprocessing.mean[0] == FASHION_MNIST_MEAN[0]
    assert ckpt.extra["epochs"] == 2 and ckpt.extra["train_config"]["lr"] == 1e-2
    from mbv3_mobile.data.datasets import BatchTransform

    x = BatchTransform(ckpt.preprocessing)(fashion_test.images[:2000])
    with torch.no_grad():
        test_top1 = (ckpt.model(x).argmax(1) == fashion_test.labels[:2000]).float().mean().item()
    assert test_top1 > 0.6

    out = result.out_dir
    jsonl = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert jsonl == m and [float(r["val_top1"]) for r in rows] == [row["val_top1"] for row in m]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["images_per_second"] > 0 and summary["world_size"] == 1
    assert summary["rank_fingerprints"][0]["final"] == state_fingerprint(load_file(result.checkpoint))


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    driver = _driver(tmp_path)
    args = [*TINY, "--epochs", "3"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    marker = tmp_path / "hung"
    # Step 15 of 30 is the middle of epoch 2: epoch 1's state is on disk, epoch 2's work is lost.
    proc = subprocess.Popen([sys.executable, str(driver), "train", "--out", str(killed), *args],
                            env=_env(HANG_AT_STEP="15", HANG_MARKER=str(marker)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the training run never reached step 15"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(killed / STATE_FILE, weights_only=True)
    assert state["epoch"] == 0  # only the first epoch was checkpointed
    assert not (killed / "model.safetensors").exists()
    assert not list(killed.glob(".*.tmp"))  # no half-written file left behind

    _run_cli(driver, ["train", "--out", str(killed), *args, "--resume"])
    _run_cli(driver, ["train", "--out", str(clean), *args])

    resumed = torch.load(killed / STATE_FILE, weights_only=True)
    reference = torch.load(clean / STATE_FILE, weights_only=True)
    assert resumed["epoch"] == reference["epoch"] == 2
    for part in ("model", "ema"):
        assert state_fingerprint(resumed[part]) == state_fingerprint(reference[part]), part
    assert resumed["optimizer"]["state"][0]["step"] == reference["optimizer"]["state"][0]["step"] == 30
    final_resumed, final_clean = load_file(killed / "model.safetensors"), load_file(clean / "model.safetensors")
    assert state_fingerprint(final_resumed) == state_fingerprint(final_clean)
    assert state_fingerprint(resumed["model"]) != state_fingerprint(state["model"])  # it did train on

    def losses(path):
        return [(r["epoch"], r["train_loss"], r["val_top1"]) for r in map(json.loads, path.read_text().splitlines())]

    assert losses(killed / "metrics.jsonl") == losses(clean / "metrics.jsonl")

    # Resuming a finished run trains nothing and rewrites the same final model.
    _run_cli(driver, ["train", "--out", str(killed), *args, "--resume"])
    assert state_fingerprint(load_file(killed / "model.safetensors")) == state_fingerprint(final_clean)


@pytest.mark.slow
def test_torchrun_ddp_two_cpu_ranks_end_identical(tmp_path):
    out = tmp_path / "ddp"
    res = subprocess.run([str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "mbv3_mobile", "train",
                          "--out", str(out), *TINY, "--epochs", "2"], capture_output=True, text=True,
                         env=_env(), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    ranks = summary["rank_fingerprints"]
    assert summary["world_size"] == 2 and len(ranks) == 2
    assert ranks[0] == ranks[1]  # raw weights + buffers, EMA and final model, hashed on each rank
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state_fingerprint(state["model"]) == ranks[0]["model"]
    assert state_fingerprint(load_file(out / "model.safetensors")) == ranks[0]["final"]
    # DistributedSampler split the 640 images: 5 steps of 64 per rank per epoch, not 10.
    assert state["optimizer"]["state"][0]["step"] == 10
    assert res.stdout.count('"epoch"') == 2  # only rank 0 logs


@pytest.mark.slow
def test_processes_option_launches_ddp_workers(tmp_path):
    # What the zoo recipes use on a 2-core CPU: torchrun workers started by train() itself.
    cfg = TrainConfig(out_dir=str(tmp_path / "p"), width=0.35, max_train_images=640, batch_size=32, epochs=1,
                      val_fraction=0.02, bn_recalibration_images=256, processes=2, progress=False)
    result = train(cfg)
    assert result.summary["world_size"] == 2 and len(result.summary["rank_fingerprints"]) == 2
    assert result.summary["threads"] == max(1, (os.cpu_count() or 1) // 2)
    assert state_fingerprint(result.model.state_dict()) == result.summary["rank_fingerprints"][0]["final"]
    assert [m["epoch"] for m in result.metrics] == [1]
    with pytest.raises(UserError, match="neither 'fashion-mnist' nor an ImageFolder directory"):
        train(TrainConfig(out_dir=str(tmp_path / "q"), dataset=str(tmp_path / "missing"), processes=2))


def test_finetune_new_head_with_frozen_backbone(tmp_path, trained_ci_checkpoint):
    tree = make_image_tree(tmp_path / "colors", per_class=12, size=16)
    out = tmp_path / "ft"
    code = main(["train", "--dataset", str(tree), "--init-checkpoint", str(trained_ci_checkpoint), "--freeze-backbone",
                 "--num-classes", "3", "--out", str(out), "--epochs", "3", "--batch-size", "8", "--lr", "1e-2",
                 "--resolution", "32", "--val-fraction", "0.25", "--no-progress"])
    assert code == 0
    base, tuned = load_checkpoint(trained_ci_checkpoint), load_checkpoint(out / "model.safetensors")
    assert (tuned.config.arch, tuned.config.width) == (base.config.arch, base.config.width)  # from the checkpoint
    assert tuned.config.num_classes == 3 and tuned.labels == ["blue", "green", "red"]
    assert tuned.preprocessing.mean == (0.485, 0.456, 0.406)  # ImageFolder: ImageNet statistics
    base_sd, tuned_sd = base.model.state_dict(), tuned.model.state_dict()
    features = [k for k in base_sd if k.startswith("features.")]
    assert all(torch.equal(base_sd[k], tuned_sd[k]) for k in features)  # weights and BN statistics
    assert not torch.equal(base_sd["classifier.0.weight"], tuned_sd["classifier.0.weight"])
    assert tuned_sd["classifier.3.weight"].shape == (3, base.config.head_ch)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert metrics[-1]["val_top1"] == 1.0  # solid colours are trivially separable


def test_finetune_whole_network_keeps_head_for_same_classes(tmp_path, trained_ci_checkpoint):
    cfg = TrainConfig(out_dir=str(tmp_path / "ft"), init_checkpoint=str(trained_ci_checkpoint), arch="small",
                      width=0.5, max_train_images=500, epochs=1, batch_size=100, lr=1e-4, val_fraction=0.02,
                      bn_recalibration_images=500, progress=False)
    result = train(cfg)
    base = load_checkpoint(trained_ci_checkpoint)
    # Same 10 labels: the trained head is kept, so accuracy starts (and stays) high after a gentle epoch.
    assert result.metrics[0]["val_top1"] > 0.75
    assert not torch.equal(base.model.state_dict()["features.1.block.0.0.weight"],
                           result.model.state_dict()["features.1.block.0.0.weight"])


def test_bad_options_are_clear_errors(tmp_path, capsys, trained_ci_checkpoint):
    tree = make_image_tree(tmp_path / "colors", per_class=4, size=8)
    assert main(["train", "--dataset", str(tree), "--num-classes", "5", "--out", str(tmp_path / "a"),
                 "--no-progress"]) == 2
    assert "--num-classes 5 but" in capsys.readouterr().err
    assert main(["train", "--init-checkpoint", str(trained_ci_checkpoint), "--width", "1.0",
                 "--out", str(tmp_path / "b")]) == 2
    assert "pass matching --arch/--width/--minimal" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "c"), "--resume"]) == 2
    assert f"there is no {STATE_FILE}" in capsys.readouterr().err
    assert main(["train", "--epochs", "0"]) == 2
    assert "epochs must be >= 1" in capsys.readouterr().err
    assert main(["train", "--recipe", "ci", "--epochs", "3"]) == 2
    assert "drop --epochs" in capsys.readouterr().err

    run = tmp_path / "d"
    run.mkdir()
    torch.save({"config": {**TrainConfig(out_dir=str(run)).__dict__, "arch": "large", "lr": 1.0},
                "world_size": 1}, run / STATE_FILE)
    with pytest.raises(UserError, match=r"already holds a run .*pass --resume"):
        train(TrainConfig(out_dir=str(run)))
    with pytest.raises(UserError, match=r"other settings \(arch: 'large' -> 'small'; lr: 1\.0 -> 0\.003\)"):
        train(TrainConfig(out_dir=str(run)), resume=True)
