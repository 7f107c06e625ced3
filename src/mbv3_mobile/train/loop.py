"""Training and fine-tuning on real images, single process or torchrun/DDP, resumable, for every
task that has a trainer module (`train.classification`, `train.segmentation`: its data, model,
loss, validation figures and checkpoint); this loop is the part they share.

Recipe (torchvision/timm spirit, all configurable): AdamW (or SGD / RMSprop), linear warmup then
cosine decay per step, label smoothing, no weight decay on norm/bias, EMA of weights (evaluated and
exported when enabled), channels_last, flip/translate/random-erasing augmentation. BatchNorm
statistics of the evaluated/exported model are recomputed on training images (see `_recalibrated`).

Each epoch writes `last.state.pt` atomically (model, optimizer, scheduler, EMA, metrics). Random
streams are re-derived from (seed, epoch, rank) at every epoch start, so the state at an epoch
boundary fully determines the rest of the run: `--resume` after a kill takes the exact path of an
uninterrupted run.

Under `torchrun --nproc-per-node N` the same entry point trains with DDP (gloo on CPU, nccl on
GPU) and a DistributedSampler; rank 0 validates and writes files, and at the end every rank's
weights are compared by hash (a divergence is an error, not a silent difference).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from mbv3_mobile.core.atomic import atomic_path, write_text_atomic
from mbv3_mobile.core.errors import ConfigError, UserError
from mbv3_mobile.data.datasets import BatchTransform
from mbv3_mobile.data.preprocess import Preprocessing
from mbv3_mobile.model.config import ModelConfig, check_resolution
from mbv3_mobile.train.artifacts import _log, _progress, _write_metrics, plot_curves
from mbv3_mobile.train.distributed import _check_ranks_agree, _dist_setup, _sync_epoch_end

STATE_FILE = "last.state.pt"
FINAL_FILE = "model.safetensors"
SUMMARY_FILE = "summary.json"
OPTIMIZERS = ("adamw", "sgd", "rmsprop")
TASKS = ("classification", "segmentation")  # the tasks with a trainer module
# Settings that may change between a run and its resume without changing its result.
RESUME_FREE_FIELDS = frozenset({"out_dir", "progress", "num_workers"})


@dataclass
class TrainConfig:
    out_dir: str = "runs/train"
    task: str = "classification"  # or "segmentation" (LR-ASPP)
    dataset: str = "fashion-mnist"  # or an ImageFolder root; segmentation: a images/ + masks/ root or "composite"
    val_dataset: str | None = None  # a folder for validation; default: a split of train
    arch: str = "small"
    width: float = 1.0
    minimal: bool = False
    num_classes: int | None = None  # None: the data's class count (given, it must match it)
    resolution: int = 32
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    label_smoothing: float | None = None  # None: the task's default (classification 0.1, segmentation 0)
    ema_decay: float = 0.999  # 0 disables EMA
    dropout: float = 0.2
    augment: bool = True  # random flip + translation
    translate: float = 0.125  # max shift, fraction of the side
    random_erasing: float = 0.0  # probability, applied when augment is on
    channels_last: bool = True
    seed: int = 0
    val_fraction: float = 1 / 12
    max_train_images: int | None = None  # a balanced subset, for quick runs
    init_checkpoint: str | None = None  # fine-tune from any supported checkpoint of the task
    init_backbone: str | None = None  # segmentation: start the backbone from a classification checkpoint
    freeze_backbone: bool = False
    strict_images: bool = False
    num_workers: int = 0
    processes: int = 1  # >1: DDP workers launched on this machine (ignored under torchrun); batch_size is per process
    bn_recalibration_images: int = 4096  # 0 keeps the running statistics as trained
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def validate(self) -> None:
        """Raise a ConfigError naming the first bad setting and its valid range."""
        ModelConfig(arch=self.arch, width=self.width, dropout=self.dropout, minimal=self.minimal)
        check_resolution(self.resolution)
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_epochs >= 0, f"warmup epochs must be >= 0, got {self.warmup_epochs}"),
            (self.task in TASKS, f"unknown training task {self.task!r}: use {', '.join(TASKS)}"),
            (self.label_smoothing is None or 0 <= self.label_smoothing < 1,
             f"label smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.init_backbone is None or self.task == "segmentation",
             "--init-backbone starts a segmentation backbone from a classifier; for classification use --init-checkpoint"),
            (not (self.init_backbone and self.init_checkpoint),
             "give --init-checkpoint (a segmentation checkpoint to fine-tune) or --init-backbone (a classifier), not both"),
            (self.task != "segmentation" or self.random_erasing == 0,
             "random erasing would hide pixels the masks still label: it is for classification only"),
            (not self.freeze_backbone or self.init_checkpoint or self.init_backbone,
             "--freeze-backbone needs trained weights to freeze: add --init-checkpoint (or --init-backbone)"),
            (0 <= self.ema_decay < 1, f"EMA decay must be in [0, 1) (0 disables it), got {self.ema_decay}"),
            (0 <= self.translate < 0.5, f"translation must be a fraction of the side in [0, 0.5), got {self.translate}"),
            (0 <= self.random_erasing <= 1, f"random erasing probability must be in [0, 1], got {self.random_erasing}"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}: use {', '.join(OPTIMIZERS)}"),
            (self.val_dataset is not None or 0 < self.val_fraction < 1,
             f"validation fraction must be in (0, 1), got {self.val_fraction}"),
            (self.num_classes is None or self.num_classes >= 1, f"num_classes must be >= 1, got {self.num_classes}"),
            (self.max_train_images is None or self.max_train_images >= 1,
             f"max train images must be >= 1, got {self.max_train_images}"),
            (self.bn_recalibration_images >= 0, "BN recalibration images must be >= 0 (0 disables it)"),
            (self.processes >= 1, f"processes must be >= 1, got {self.processes}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


@dataclass
class TrainResult:
    checkpoint: Path
    metrics: list[dict]
    out_dir: Path
    model: nn.Module | None = None  # the evaluated/exported model (EMA + recalibrated BN), on CPU
    summary: dict = field(default_factory=dict)


# ---------------------------------------------------------------- distributed helpers


def _epoch_seed(cfg: TrainConfig, epoch: int, rank: int) -> int:
    return ((cfg.seed * 1_000_003 + epoch) * 1_009 + rank) % (2**63)


# ---------------------------------------------------------------- model / optimiser


def task_trainer(task: str):
    """The module that knows a task's data, model, loss, validation figures and checkpoint."""
    if task == "segmentation":
        from mbv3_mobile.train import segmentation as trainer
    else:
        from mbv3_mobile.train import classification as trainer
    return trainer


def label_smoothing_of(cfg: TrainConfig) -> float:
    """The label smoothing a run uses: the one it names, else its task's default."""
    return task_trainer(cfg.task).LABEL_SMOOTHING if cfg.label_smoothing is None else cfg.label_smoothing


def _ema_with_warmup(decay: float):
    """EMA whose decay ramps up as (1+n)/(10+n) (timm/TF style), so short runs still get a useful
    average instead of one dominated by the random initialisation."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        floats = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1.0 - d)
        for a, c in zip(averaged, current):
            if not a.is_floating_point():
                a.copy_(c)

    return update


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    # The paper's optimiser (TF RMSProp: decay 0.9, momentum 0.9, eps 0.0316 in torch's form).
    return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=0.9, momentum=cfg.momentum, eps=0.0316)


def _make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


# ---------------------------------------------------------------- evaluation helpers


def _recalibrated(model: nn.Module, dataset, pre: Preprocessing, cfg: TrainConfig, device) -> nn.Module:
    """An eval-mode copy whose BN running statistics are recomputed exactly (cumulative mean) on
    un-augmented training images.

    MobileNetV3's BN momentum of 0.01 needs thousands of steps before running statistics match the
    weights, and EMA weights never had statistics of their own: short runs and EMA models evaluate
    badly without this. With a frozen backbone it is skipped: the head was trained on features
    computed with the checkpoint's statistics, and changing them would shift its inputs.
    """
    model_copy = copy.deepcopy(model)
    n = min(cfg.bn_recalibration_images, len(dataset.images))
    if n <= 0 or cfg.freeze_backbone:
        return model_copy.eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randperm(len(dataset.images), generator=gen)[:n].sort().values
    transform = BatchTransform(pre)
    batches = (transform(dataset.images[idx[s : s + 256]]).to(device) for s in range(0, n, 256))
    torch.optim.swa_utils.update_bn(batches, model_copy)
    return model_copy.eval()


# ---------------------------------------------------------------- the loop


def train(cfg: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Train (or fine-tune) per `cfg`; with `resume`, continue from OUT/last.state.pt.

    With `cfg.processes` > 1 (and not already under torchrun) the run is handed to that many DDP
    worker processes on this machine: on a small CPU, N single-threaded processes train much faster
    than one N-threaded process (MobileNetV3's small convolutions parallelise poorly inside an op).
    """
    cfg.validate()
    if cfg.processes > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_workers(cfg, resume)
    rank, world, device, created_group = _dist_setup()
    try:
        return _train(cfg, resume, rank, world, device)
    finally:
        if created_group and dist.is_initialized():
            dist.destroy_process_group()


def _check_out_dir(out: Path, resume: bool) -> None:
    if not resume and (out / STATE_FILE).exists():
        raise UserError(f"{out} already holds a run ({STATE_FILE}): pass --resume to continue it, "
                        "or choose another --out (or delete that folder) to start over")
    if resume and not (out / STATE_FILE).is_file():
        raise UserError(f"--resume: there is no {STATE_FILE} in {out}; start without --resume")


def _launch_workers(cfg: TrainConfig, resume: bool) -> TrainResult:
    """Run `cfg` as `torchrun --standalone --nproc-per-node N` workers (this module's __main__),
    each with an equal share of the CPU threads; their output goes to this process's terminal."""
    import subprocess
    import sys

    out = Path(cfg.out_dir)
    _check_out_dir(out, resume)
    trainer = task_trainer(cfg.task)
    trainer.check_dataset(cfg)  # the common mistakes, reported before any worker starts
    threads = max(1, (os.cpu_count() or 1) // cfg.processes)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(cfg.processes),
           "-m", "mbv3_mobile.train.loop", json.dumps(asdict(cfg))] + (["--resume"] if resume else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.Popen(cmd, env=env)
    try:
        code = proc.wait()
    except BaseException:  # Ctrl-C / kill of this process: let torchrun stop its workers, not orphan them
        proc.terminate()
        proc.wait()
        raise
    if code != 0:
        raise UserError(f"the {cfg.processes} training processes failed (exit {code}); their messages are above")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = out / FINAL_FILE
    return TrainResult(checkpoint=final, metrics=metrics, out_dir=out, model=trainer.load(final),
                       summary=json.loads((out / SUMMARY_FILE).read_text()))


def _train(cfg: TrainConfig, resume: bool, rank: int, world: int, device: torch.device) -> TrainResult:
    main = rank == 0
    out = Path(cfg.out_dir)
    state_path = out / STATE_FILE
    _check_out_dir(out, resume)
    state = _load_state(state_path, cfg, world, device) if resume else None
    trainer = task_trainer(cfg.task)
    train_ds, val_ds, pre, classes = trainer.datasets(cfg)
    if cfg.num_classes is not None and cfg.num_classes != len(classes):
        raise UserError(f"--num-classes {cfg.num_classes} but {cfg.dataset} has {len(classes)} classes "
                        f"({', '.join(classes[:10])}); the head is sized by the data: omit --num-classes")

    torch.manual_seed(cfg.seed)  # identical initialisation (and new heads) on every rank and rerun
    if state is None:
        model = trainer.make_model(cfg, classes)
    else:  # the architecture only: weights come from the state (the init checkpoint may be gone)
        model = trainer.model_from_config(state["model_config"])
    if cfg.freeze_backbone:
        for p in trainer.backbone(model).parameters():
            p.requires_grad_(False)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = None
    if cfg.ema_decay > 0:
        ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=_ema_with_warmup(cfg.ema_decay), use_buffers=True)
    steps_per_epoch = math.ceil(len(train_ds) / (cfg.batch_size * world))
    opt = _make_optimizer(cfg, model)
    sched = _make_scheduler(cfg, opt, steps_per_epoch)
    start_epoch, metrics = 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start_epoch, metrics = state["epoch"] + 1, json.loads(state["metrics"])
        del state

    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    criterion = trainer.criterion(cfg)
    transform = trainer.train_transform(cfg, pre)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "train_config.json", cfg.to_json())

    show = cfg.progress and main
    epoch_bar = _progress(range(start_epoch, cfg.epochs), enabled=show, desc="epochs", total=cfg.epochs,
                          initial=start_epoch, position=0, leave=True)
    eval_model = None
    for epoch in epoch_bar:
        seed = _epoch_seed(cfg, epoch, rank)
        torch.manual_seed(seed)  # dropout: epoch-keyed, so a resumed run draws the same masks
        aug_gen = torch.Generator().manual_seed(seed)
        if world > 1:
            sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(train_ds, generator=torch.Generator().manual_seed(_epoch_seed(cfg, epoch, 0) + 1))
        loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers)
        net.train()
        if cfg.freeze_backbone:
            trainer.backbone(model).eval()  # frozen backbone: keep its BN statistics as loaded
        t0 = time.perf_counter()
        # loss sum, correct, counted (pictures or labelled pixels), pictures: summed, no per-step sync
        stats = torch.zeros(4, dtype=torch.float64, device=device)
        bar = _progress(loader, enabled=show, desc=f"epoch {epoch + 1}/{cfg.epochs}", position=1, leave=False)
        for step, (images, targets) in enumerate(bar):
            x, y = transform(images, targets, aug_gen)
            x = x.to(device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            logits = net(x)
            loss = criterion(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            with torch.no_grad():
                right, counted = trainer.correct(logits, y)
                stats[0] += loss.detach().double() * len(y)
                stats[1] += right
                stats[2] += counted
                stats[3] += len(y)
            if show and step % 20 == 0:
                bar.set_postfix(loss=f"{stats[0] / stats[3]:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        if world > 1:
            _sync_epoch_end(model, ema, stats)
        stats = stats.cpu()
        train_seconds = time.perf_counter() - t0
        row = {
            "epoch": epoch + 1,
            "train_loss": (stats[0] / stats[3]).item(),
            "train_acc": (stats[1] / stats[2]).item(),
        }
        if main:
            eval_model = _recalibrated(ema.module if ema is not None else model, train_ds, pre, cfg, device)
            row.update(
                **trainer.validate(eval_model, val_ds, pre, device),
                lr=sched.get_last_lr()[0],
                train_seconds=train_seconds,
                epoch_seconds=time.perf_counter() - t0,
                images_per_second=stats[3].item() / train_seconds,  # all ranks (stats are summed)
            )
            metrics.append(row)
            _save_state(state_path, cfg, world, epoch, model, opt, sched, ema, metrics)
            _write_metrics(out, metrics)
            _log(show, json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}))

    if eval_model is None:  # resumed a finished run, or a non-zero rank (it needs one for the check)
        eval_model = _recalibrated(ema.module if ema is not None else model, train_ds, pre, cfg, device)
    final_model = eval_model.to("cpu").to(memory_format=torch.contiguous_format)
    final = out / FINAL_FILE
    summary = {}
    fingerprints = _check_ranks_agree(model, ema, final_model, world)
    if main:
        summary = _summary(cfg, trainer, final_model, metrics, final, world, fingerprints)
        summary.update(trainer.finish(out, final_model, val_ds, pre, classes))
        trainer.save(final, final_model, preprocessing=pre, labels=classes,
                     extra={"train_config": asdict(cfg), **{k: summary[k] for k in (*trainer.SUMMARY_KEYS, "epochs")}})
        write_text_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=2))
        plot_curves(metrics, out / "curves.png", trainer.CURVES)
    if world > 1:
        dist.barrier()
    return TrainResult(checkpoint=final, metrics=metrics, out_dir=out, model=final_model, summary=summary)


def _summary(cfg: TrainConfig, trainer, model: nn.Module, metrics: list[dict], final: Path, world: int,
             fingerprints: list[dict]) -> dict:
    last = metrics[-1] if metrics else {}
    train_seconds = sum(m.get("train_seconds", 0.0) for m in metrics)
    images = sum(m.get("images_per_second", 0.0) * m.get("train_seconds", 0.0) for m in metrics)
    return {
        "checkpoint": str(final),
        "task": cfg.task,
        "model": model.config.name,
        "resolution": cfg.resolution,
        "epochs": len(metrics),
        **{k: last.get(k) for k in trainer.SUMMARY_KEYS},
        "train_seconds": train_seconds,
        "epoch_seconds": sum(m.get("epoch_seconds", 0.0) for m in metrics),
        "images_per_second": images / train_seconds if train_seconds else None,
        "world_size": world,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "rank_fingerprints": fingerprints,
    }


def _load_state(path: Path, cfg: TrainConfig, world: int, device) -> dict:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unusable file
        raise UserError(f"--resume: {path} is unreadable ({type(exc).__name__}); delete it to start over") from None
    old, new, before = state["config"], asdict(cfg), asdict(TrainConfig())  # a field added since: its default
    diffs = [f"{k}: {old.get(k, before[k])!r} -> {v!r}" for k, v in new.items()
             if k not in RESUME_FREE_FIELDS and old.get(k, before[k]) != v]
    if state.get("world_size", 1) != world:
        diffs.append(f"processes: {state.get('world_size', 1)} -> {world}")
    if diffs:
        raise UserError(f"--resume: {path} was written by a run with other settings ({'; '.join(diffs)}); "
                        "resume with the same options, or use a fresh --out")
    return state


def _save_state(path: Path, cfg: TrainConfig, world: int, epoch: int, model, opt, sched, ema, metrics) -> None:
    state = {
        "config": asdict(cfg),
        "model_config": model.config.to_dict(),
        "world_size": world,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "metrics": json.dumps(metrics),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


if __name__ == "__main__":  # a worker launched by _launch_workers (under torch.distributed.run)
    import sys

    try:
        train(TrainConfig(**json.loads(sys.argv[1])), resume="--resume" in sys.argv[2:])
    except UserError as exc:
        print(f"mbv3 train: error: {exc}", file=sys.stderr)
        sys.exit(2)
