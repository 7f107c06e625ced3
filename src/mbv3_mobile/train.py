"""Training and fine-tuning on real images, single process or torchrun/DDP, resumable.

Recipe (torchvision/timm spirit, all configurable): AdamW (or SGD / RMSprop), linear warmup then
cosine decay per step, label smoothing, no weight decay on norm/bias, EMA of weights (evaluated and
exported when enabled), channels_last. Each epoch writes `last.state.pt` atomically; `--resume`
continues from it with optimizer/scheduler/EMA state. Every epoch reseeds from (seed, epoch), so a
resumed run takes the exact path of an uninterrupted one.
"""

from __future__ import annotations

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

from .atomic import atomic_path
from .checkpoint import load_checkpoint, save_checkpoint
from .config import ModelConfig
from .data import (
    ArrayDataset,
    BatchTransform,
    ImageFolderDataset,
    fashion_mnist_preprocessing,
    load_fashion_mnist,
    train_val_split,
)
from .errors import UserError
from .model import MobileNetV3, build_model
from .preprocess import Preprocessing

STATE_FILE = "last.state.pt"
FINAL_FILE = "model.safetensors"


@dataclass
class TrainConfig:
    out_dir: str = "runs/train"
    dataset: str = "fashion-mnist"  # or an ImageFolder root
    val_dataset: str | None = None  # ImageFolder root for validation; default: a split of train
    arch: str = "small"
    width: float = 1.0
    minimal: bool = False
    resolution: int = 32
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    ema_decay: float = 0.999  # 0 disables EMA
    dropout: float = 0.2
    augment: bool = True
    channels_last: bool = True
    seed: int = 0
    val_fraction: float = 1 / 12
    max_train_images: int | None = None  # a balanced subset, for quick runs
    init_checkpoint: str | None = None  # fine-tune from any supported checkpoint
    freeze_backbone: bool = False
    strict_images: bool = False
    num_workers: int = 0
    bn_recalibration_images: int = 4096  # 0 keeps the running statistics as trained
    stop_after_steps: int | None = None  # for tests: stop (as if killed) after this many steps
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


@dataclass
class TrainResult:
    checkpoint: Path
    metrics: list[dict]
    out_dir: Path


# ---------------------------------------------------------------- distributed helpers


def _dist_setup() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _is_main(rank: int) -> bool:
    return rank == 0


# ---------------------------------------------------------------- data


def _datasets(cfg: TrainConfig) -> tuple[ArrayDataset | ImageFolderDataset, ArrayDataset | ImageFolderDataset, Preprocessing]:
    if cfg.dataset in ("fashion-mnist", "fashion_mnist", "fmnist"):
        full = load_fashion_mnist("train")
        train_ds, val_ds = train_val_split(full, cfg.val_fraction, seed=cfg.seed)
        if cfg.max_train_images:
            from .data import balanced_subset

            train_ds = balanced_subset(train_ds, max(1, cfg.max_train_images // len(full.classes)), seed=cfg.seed)
        return train_ds, val_ds, fashion_mnist_preprocessing(cfg.resolution)
    folder = ImageFolderDataset(cfg.dataset, cfg.resolution, strict=cfg.strict_images)
    if cfg.val_dataset:
        val = ImageFolderDataset(cfg.val_dataset, cfg.resolution, strict=cfg.strict_images)
        if val.classes != folder.classes:
            raise UserError(f"validation classes {val.classes} differ from training classes {folder.classes}")
        train_ds, val_ds = folder.to_arrays(), val.to_arrays()
    else:
        train_ds, val_ds = train_val_split(folder.to_arrays(), cfg.val_fraction, seed=cfg.seed)
    # ImageNet statistics: the usual choice for natural RGB images (and for transfer learning).
    return train_ds, val_ds, Preprocessing(resolution=cfg.resolution)


# ---------------------------------------------------------------- model / optimiser


def _make_model(cfg: TrainConfig, num_classes: int) -> MobileNetV3:
    if cfg.init_checkpoint:
        ckpt = load_checkpoint(cfg.init_checkpoint)
        model = ckpt.model
        if (model.config.arch, model.config.width, model.config.minimal) != (cfg.arch, cfg.width, cfg.minimal):
            raise UserError(
                f"--init-checkpoint is {model.config.name}, but the run asks for arch={cfg.arch} "
                f"width={cfg.width} minimal={cfg.minimal}; pass matching --arch/--width/--minimal"
            )
        if model.config.num_classes != num_classes:
            model.reset_classifier(num_classes)
        model.config = ModelConfig(**{**model.config.to_dict(), "dropout": cfg.dropout})
        model.classifier[2].p = cfg.dropout
        model.train()
    else:
        model = build_model(arch=cfg.arch, width=cfg.width, num_classes=num_classes, dropout=cfg.dropout, minimal=cfg.minimal)
    if cfg.freeze_backbone:
        for p in model.features.parameters():
            p.requires_grad_(False)
    return model


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
    if cfg.optimizer == "rmsprop":
        # The paper's optimiser (TF RMSProp: decay 0.9, momentum 0.9, eps 0.0316 in torch's form).
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=0.9, momentum=cfg.momentum, eps=0.0316)
    raise UserError(f"unknown optimizer {cfg.optimizer!r}: use adamw, sgd or rmsprop")


def _make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def predict_logits(model: nn.Module, dataset, preprocessing: Preprocessing, *, batch_size: int = 256,
                   device: torch.device | str = "cpu", channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels for a whole dataset, in dataset order."""
    model.eval()
    transform = BatchTransform(preprocessing)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    outs, labels = [], []
    for images, y in loader:
        x = transform(images).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outs.append(model(x).float().cpu())
        labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    k = min(k, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    return (topk == labels.view(-1, 1)).any(dim=1).float().mean().item()


# ---------------------------------------------------------------- the loop


def train(cfg: TrainConfig, *, resume: bool = False) -> TrainResult:
    rank, world, device = _dist_setup()
    out = Path(cfg.out_dir)
    state_path = out / STATE_FILE
    if _is_main(rank):
        out.mkdir(parents=True, exist_ok=True)
    train_ds, val_ds, pre = _datasets(cfg)
    classes = list(train_ds.classes)
    model = _make_model(cfg, len(classes)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = None
    if cfg.ema_decay > 0:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=_ema_with_warmup(cfg.ema_decay), use_buffers=True
        )
    steps_per_epoch = math.ceil(len(train_ds) / (cfg.batch_size * world))
    opt = _make_optimizer(cfg, model)
    sched = _make_scheduler(cfg, opt, steps_per_epoch)
    start_epoch, metrics = 0, []
    if resume:
        if not state_path.is_file():
            raise UserError(f"--resume: no {STATE_FILE} in {out}; start without --resume")
        state = torch.load(state_path, map_location=device, weights_only=True)
        if state["config"]["arch"] != cfg.arch or state["config"]["width"] != cfg.width:
            raise UserError(f"--resume: {state_path} is from a run with another model; use a fresh --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        start_epoch, metrics = state["epoch"] + 1, json.loads(state["metrics"])
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    transform = BatchTransform(pre, augment=cfg.augment)
    if _is_main(rank):
        (out / "train_config.json").write_text(cfg.to_json())
    steps_done = start_epoch * steps_per_epoch

    for epoch in range(start_epoch, cfg.epochs):
        torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout & co: epoch-keyed, so resume is exact
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        if world > 1:
            sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(train_ds, generator=gen)
        loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers, drop_last=False)
        net.train()
        t0, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
        bar = _progress(loader, enabled=cfg.progress and _is_main(rank), desc=f"epoch {epoch + 1}/{cfg.epochs}")
        for images, labels in bar:
            x = transform(images, gen).to(device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = labels.to(device)
            logits = net(x)
            loss = criterion(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            steps_done += 1
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
            if cfg.stop_after_steps is not None and steps_done >= cfg.stop_after_steps:
                return TrainResult(checkpoint=state_path, metrics=metrics, out_dir=out)
        eval_model = _recalibrated(ema.module if ema is not None else model, train_ds, pre, cfg, device)
        val_logits, val_labels = predict_logits(eval_model, val_ds, pre, device=device)
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(1, seen),
            "train_acc": correct / max(1, seen),
            "val_loss": nn.functional.cross_entropy(val_logits, val_labels).item(),
            "val_top1": accuracy(val_logits, val_labels, 1),
            "val_top5": accuracy(val_logits, val_labels, 5),
            "lr": sched.get_last_lr()[0],
            "epoch_seconds": time.perf_counter() - t0,
            "images_per_second": seen * world / (time.perf_counter() - t0),
        }
        metrics.append(row)
        if _is_main(rank):
            print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            _save_state(state_path, cfg, epoch, model, opt, sched, ema, metrics)
            with open(out / "metrics.jsonl", "w") as f:
                f.writelines(json.dumps(m) + "\n" for m in metrics)
    final = out / FINAL_FILE
    if _is_main(rank):
        best = eval_model.to("cpu").to(memory_format=torch.contiguous_format)
        summary = metrics[-1] if metrics else {}
        save_checkpoint(final, best, preprocessing=pre, labels=classes,
                        extra={"train_config": asdict(cfg), "val_top1": summary.get("val_top1"), "epochs": len(metrics)})
        plot_curves(metrics, out / "curves.png")
    if world > 1:
        dist.barrier()
    return TrainResult(checkpoint=final, metrics=metrics, out_dir=out)


def _recalibrated(model: nn.Module, dataset, pre: Preprocessing, cfg: TrainConfig, device) -> nn.Module:
    """A copy whose BN running statistics are recomputed exactly (cumulative mean) on training images.

    MobileNetV3's BN momentum of 0.01 needs thousands of steps before running statistics match the
    weights (and EMA weights never had statistics of their own); short fine-tunes and EMA models
    evaluate badly without this. torch's `update_bn` does the pass.
    """
    import copy

    model_copy = copy.deepcopy(model)
    n = min(cfg.bn_recalibration_images, len(dataset))
    if n <= 0:
        return model_copy
    gen = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randperm(len(dataset), generator=gen)[:n]
    transform = BatchTransform(pre)
    batches = (
        transform(torch.stack([dataset[int(i)][0] for i in idx[s : s + 256]])).to(device)
        for s in range(0, n, 256)
    )
    torch.optim.swa_utils.update_bn(batches, model_copy)
    return model_copy.eval()


def _save_state(path: Path, cfg: TrainConfig, epoch: int, model, opt, sched, ema, metrics) -> None:
    state = {
        "config": asdict(cfg),
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "metrics": json.dumps(metrics),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _progress(iterable, *, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


def plot_curves(metrics: list[dict], path: Path) -> None:
    if not metrics:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m["epoch"] for m in metrics]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [m["train_loss"] for m in metrics], label="train")
    ax1.plot(epochs, [m["val_loss"] for m in metrics], label="val")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot(epochs, [100 * m["train_acc"] for m in metrics], label="train top-1")
    ax2.plot(epochs, [100 * m["val_top1"] for m in metrics], label="val top-1")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    ax2.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- CLI


def register_cli(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune on Fashion-MNIST or an ImageFolder tree")
    d = TrainConfig()
    p.add_argument("--out", dest="out_dir", default=d.out_dir)
    p.add_argument("--dataset", default=d.dataset, help="'fashion-mnist' or an ImageFolder root (root/class/*.jpg)")
    p.add_argument("--val-dataset", default=None, help="ImageFolder root for validation (default: split of train)")
    p.add_argument("--arch", default=d.arch, choices=("large", "small"))
    p.add_argument("--width", type=float, default=d.width)
    p.add_argument("--minimal", action="store_true")
    p.add_argument("--resolution", type=int, default=d.resolution)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--optimizer", default=d.optimizer, choices=("adamw", "sgd", "rmsprop"))
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--ema-decay", type=float, default=d.ema_decay, help="0 disables the EMA of weights")
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-train-images", type=int, default=None)
    p.add_argument("--init-checkpoint", default=None, help="fine-tune from this checkpoint (new head if classes differ)")
    p.add_argument("--freeze-backbone", action="store_true")
    p.add_argument("--strict-images", action="store_true", help="fail on unreadable images instead of skipping")
    p.add_argument("--num-workers", type=int, default=d.num_workers)
    p.add_argument("--resume", action="store_true", help=f"continue from OUT/{STATE_FILE}")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    result = train(TrainConfig(**fields), resume=args.resume)
    if result.metrics:
        last = result.metrics[-1]
        print(f"[mbv3] {result.checkpoint}: val top-1 {100 * last['val_top1']:.2f} % after {last['epoch']} epochs")
    return 0
