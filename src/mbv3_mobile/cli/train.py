"""`mbv3 train`: train or fine-tune (DDP through torchrun or --processes)."""

from __future__ import annotations

from mbv3_mobile.model.config import ARCHS, WIDTHS

OPTIMIZERS = ("adamw", "sgd", "rmsprop")


def register(sub) -> None:
    from mbv3_mobile.train.loop import STATE_FILE, TASKS, TrainConfig

    p = sub.add_parser("train", help="train or fine-tune a classifier or an LR-ASPP segmenter (torchrun-ready)",
                       description="Train from scratch, or fine-tune from any checkpoint (--init-checkpoint); "
                                   "--task segmentation trains LR-ASPP on image + mask folders, optionally from a "
                                   "classifier's backbone (--init-backbone). "
                                   "Runs under `torchrun --nproc-per-node N -m mbv3_mobile train ...` with DDP.")
    d = TrainConfig()
    p.add_argument("--task", default=d.task, choices=TASKS, help=f"what the network learns (default: {d.task})")
    p.add_argument("--out", dest="out_dir", default=d.out_dir, metavar="DIR",
                   help=f"run folder: state, metrics, curves, model.safetensors (default: {d.out_dir})")
    p.add_argument("--dataset", default=d.dataset, metavar="DATA",
                   help="classification: 'fashion-mnist' or an ImageFolder root (ROOT/<class>/*.jpg); segmentation: "
                        "a root with images/, masks/ (class index per pixel, 255 = ignore) and labels.txt, or "
                        "'composite' (the offline test bed) (default: fashion-mnist)")
    p.add_argument("--val-dataset", default=None, metavar="DIR",
                   help="a folder of the same kind for validation (default: a split of train)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, metavar="X",
                   help=f"held-out share of train for validation, 0..1 (default: {d.val_fraction:.4f})")
    p.add_argument("--arch", default=None, choices=ARCHS, help="architecture (default: small, or the --init-checkpoint's)")
    p.add_argument("--width", type=float, default=None, choices=WIDTHS,
                   help="width multiplier (default: 1.0, or the --init-checkpoint's)")
    p.add_argument("--minimal", action="store_true", default=None, help="TF-slim minimalistic variant (no SE/h-swish, 3x3 only)")
    p.add_argument("--num-classes", type=int, default=None, metavar="N",
                   help="classes of the (new) head; default and only valid value: the dataset's class count")
    p.add_argument("--resolution", type=int, default=d.resolution, metavar="PX",
                   help=f"input side in pixels, >= 32 (default: {d.resolution})")
    p.add_argument("--epochs", type=int, default=d.epochs, metavar="N", help=f"passes over the training set (default: {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, metavar="N",
                   help=f"pictures per step and per process (default: {d.batch_size})")
    p.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS, help=f"optimizer (default: {d.optimizer})")
    p.add_argument("--lr", type=float, default=d.lr, metavar="X", help=f"peak learning rate after warm-up (default: {d.lr})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, metavar="X",
                   help=f"decoupled weight decay, not applied to norm/bias (default: {d.weight_decay})")
    p.add_argument("--momentum", type=float, default=d.momentum, metavar="X", help=f"SGD / RMSprop momentum (default: {d.momentum})")
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, metavar="X",
                   help=f"linear warm-up length in epochs, then per-step cosine (default: {d.warmup_epochs})")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing, metavar="X",
                   help="label smoothing, 0..1 (default: 0.1 for classification, 0 for segmentation)")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay, metavar="X",
                   help=f"EMA of weights per step; 0 disables it (default: {d.ema_decay})")
    p.add_argument("--dropout", type=float, default=d.dropout, metavar="X", help=f"dropout before the last layer (default: {d.dropout})")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no flip / shift / erasing augmentation")
    p.add_argument("--translate", type=float, default=d.translate, metavar="X",
                   help=f"max random shift as a fraction of the side (default: {d.translate})")
    p.add_argument("--random-erasing", type=float, default=d.random_erasing, metavar="P",
                   help=f"random-erasing probability per picture (default: {d.random_erasing})")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="keep NCHW memory layout")
    p.add_argument("--seed", type=int, default=d.seed, metavar="N", help=f"random seed (default: {d.seed})")
    p.add_argument("--max-train-images", type=int, default=None, metavar="N", help="train on a class-balanced subset of N pictures")
    p.add_argument("--bn-recalibration-images", type=int, default=d.bn_recalibration_images, metavar="N",
                   help=f"training pictures that recompute BatchNorm statistics of the final model; 0 keeps them "
                        f"(default: {d.bn_recalibration_images})")
    p.add_argument("--init-checkpoint", default=None, metavar="FILE",
                   help="fine-tune from this checkpoint (ours, torchvision or timm); new head if the classes differ")
    p.add_argument("--init-backbone", default=None, metavar="FILE",
                   help="segmentation: start the backbone from this classifier (ours, torchvision or timm; same arch "
                        "and width; 'embedded:default' = the shipped one), the LR-ASPP head from scratch")
    p.add_argument("--freeze-backbone", action="store_true",
                   help="train the head only (with --init-checkpoint or --init-backbone)")
    p.add_argument("--strict-images", action="store_true", help="fail on unreadable images instead of skipping them")
    p.add_argument("--num-workers", type=int, default=d.num_workers, metavar="N", help=f"data-loader workers (default: {d.num_workers})")
    p.add_argument("--processes", type=int, default=d.processes, metavar="N",
                   help="DDP worker processes to launch on this machine (like torchrun --nproc-per-node); "
                        "--batch-size is per process (default: 1)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars (one JSON line per epoch)")
    p.add_argument("--resume", action="store_true", help=f"continue the run in --out from its {STATE_FILE}")
    p.add_argument("--recipe", default=None, metavar="NAME",
                   help="train a named recipe (mbv3_mobile.train.zoo: 'default' reproduces the embedded model, 'ci' "
                        "the tests' model) into the cache folder, resuming if interrupted; takes no other training option")
    defaults = vars(p.parse_args([]))
    p.set_defaults(func=run, cli_defaults=defaults)


def run(args) -> int:
    from mbv3_mobile.core.errors import UserError
    from mbv3_mobile.train.loop import TrainConfig, train

    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    if args.quiet:
        fields["progress"] = False
    if args.recipe:
        from mbv3_mobile.train.zoo import RECIPES, reproduce_recipe

        changed = [k for k, v in fields.items() if k != "progress" and v != args.cli_defaults.get(k)]
        if changed or args.resume:
            raise UserError(f"--recipe {args.recipe} fixes every training option; drop "
                            f"{', '.join('--' + k.replace('_', '-') for k in changed) or '--resume'} "
                            f"(or omit --recipe). Recipes: {', '.join(RECIPES)}")
        path, summary = reproduce_recipe(args.recipe, progress=fields["progress"])
        print(f"[mbv3] recipe {args.recipe!r}: {path} ({_headline(summary) or 'trained'})")
        return 0
    arch_fields = ("arch", "width", "minimal")
    start = args.init_checkpoint or args.init_backbone
    if start and any(fields[k] is None for k in arch_fields):
        cfg = _start_config(args)
        fields.update({k: getattr(cfg, k) for k in arch_fields if fields[k] is None})
    defaults = TrainConfig()
    fields.update({k: getattr(defaults, k) for k in arch_fields if fields[k] is None})
    result = train(TrainConfig(**fields), resume=args.resume)
    s = result.summary
    if s:
        print(f"[mbv3] {result.checkpoint}: {_headline(s)} after {s['epochs']} epochs "
              f"({s['train_seconds']:.0f} s training, {s['images_per_second']:.0f} images/s)")
    return 0


def _headline(summary: dict) -> str:
    """The figure a run is judged by: validation mIoU (segmentation) or top-1 (classification)."""
    for key, name in (("val_miou", "val mIoU"), ("val_top1", "val top-1")):
        if summary.get(key) is not None:
            return f"{name} {100 * summary[key]:.2f} %"
    return ""


def _start_config(args):
    """The arch/width/minimal of the checkpoint a run starts from (read, not trusted: the loader checks it)."""
    from mbv3_mobile.model.checkpoint import load_checkpoint
    from mbv3_mobile.train.shipped import resolve

    if args.task == "segmentation" and args.init_checkpoint:
        from mbv3_mobile.tasks.segmentation.checkpoint import load_segmentation_checkpoint

        return load_segmentation_checkpoint(args.init_checkpoint).config
    return load_checkpoint(resolve(args.init_checkpoint or args.init_backbone)).config



