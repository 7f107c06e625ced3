"""`mbv3 eval`: top-1 / top-5, per-class accuracy and a confusion matrix; for a segmentation checkpoint
mIoU (with bounds), per-class IoU, pixel accuracy, a confusion matrix and a sheet of masks."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("eval", help="accuracy (classifiers) or mIoU (segmentation) with a confusion matrix",
                       description="Evaluate a checkpoint (default: the embedded Fashion-MNIST model) and write "
                                   "OUT/eval.json and OUT/confusion.png (segmentation: also OUT/masks.png). The task "
                                   "is read from one of our checkpoints; --task says it for other files.")
    p.add_argument("--task", default=None, choices=("classification", "segmentation"),
                   help="what the checkpoint does (default: read from the checkpoint, else classification)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="FILE", help="any supported checkpoint (.safetensors, torchvision/timm .pth)")
    src.add_argument("--recipe", default=None, metavar="NAME",
                     help="a named model of mbv3_mobile.train.zoo (default: 'default', the embedded model)")
    p.add_argument("--dataset", default=None, metavar="DATA",
                   help="classification: 'fashion-mnist' or an ImageFolder root (ROOT/<class>/*.jpg) (default: "
                        "fashion-mnist); segmentation: a root with images/, masks/ and labels.txt, or 'composite' "
                        "(the test bed's held-out split, the default)")
    p.add_argument("--split", default="test", choices=("train", "test"), help="Fashion-MNIST split (default: test)")
    p.add_argument("--out", default="runs/eval", metavar="DIR", help="folder for eval.json and confusion.png (default: runs/eval)")
    p.add_argument("--max-images", type=int, default=None, metavar="N",
                   help="evaluate a subset of N pictures (class-balanced for classification)")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="pictures per forward pass (default: 256)")
    p.add_argument("--resolution", type=int, default=None, metavar="PX",
                   help="input side for checkpoints without stored preprocessing (default: 224)")
    p.add_argument("--strict-images", action="store_true", help="fail on unreadable images instead of skipping them")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    from mbv3_mobile.core.errors import UserError
    from mbv3_mobile.tasks import checkpoint_task
    from mbv3_mobile.train.evaluate import evaluate, write_report

    checkpoint = args.checkpoint
    if checkpoint is None:
        from mbv3_mobile.train.zoo import ensure_model

        checkpoint = ensure_model(args.recipe or "default")
    if args.max_images is not None and args.max_images < 1:
        raise UserError(f"--max-images must be >= 1, got {args.max_images}")
    task = args.task or checkpoint_task(checkpoint).name
    if task == "segmentation":
        return _segmentation(args, checkpoint)
    report = evaluate(checkpoint, args.dataset or "fashion-mnist", split=args.split, max_images=args.max_images,
                      batch_size=args.batch_size, strict_images=args.strict_images, resolution=args.resolution)
    json_path, png_path = write_report(report, args.out)
    return _show(report, args.json, f"{json_path} and {png_path}")


def _show(report, as_json: bool, written: str) -> int:
    """The report as JSON, or its table, notes and the files written."""
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.table())
        for note in report.notes:
            print(f"note: {note}")
        print(f"[mbv3] wrote {written}")
    return 0


def _segmentation(args, checkpoint) -> int:
    from mbv3_mobile.train.evaluate_segmentation import CONFUSION_FILE, MASKS_FILE, REPORT_FILE, evaluate_segmentation

    report = evaluate_segmentation(checkpoint, args.dataset or "composite", max_images=args.max_images,
                                   batch_size=min(args.batch_size, 64), resolution=args.resolution, out_dir=args.out)
    return _show(report, args.json, f"{args.out}/{REPORT_FILE}, {CONFUSION_FILE} and {MASKS_FILE}")
