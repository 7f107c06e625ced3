"""`mbv3 eval`: top-1 / top-5, per-class accuracy and a confusion matrix."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("eval", help="top-1/top-5, per-class accuracy, confusion matrix on Fashion-MNIST or an ImageFolder",
                       description="Evaluate a checkpoint (default: the embedded Fashion-MNIST model) and write "
                                   "OUT/eval.json and OUT/confusion.png.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="FILE", help="any supported checkpoint (.safetensors, torchvision/timm .pth)")
    src.add_argument("--recipe", default=None, metavar="NAME",
                     help="a named model of mbv3_mobile.train.zoo (default: 'default', the embedded model)")
    p.add_argument("--dataset", default="fashion-mnist", metavar="DATA",
                   help="'fashion-mnist' or an ImageFolder root (ROOT/<class>/*.jpg) (default: fashion-mnist)")
    p.add_argument("--split", default="test", choices=("train", "test"), help="Fashion-MNIST split (default: test)")
    p.add_argument("--out", default="runs/eval", metavar="DIR", help="folder for eval.json and confusion.png (default: runs/eval)")
    p.add_argument("--max-images", type=int, default=None, metavar="N", help="evaluate a class-balanced subset of N pictures")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="pictures per forward pass (default: 256)")
    p.add_argument("--resolution", type=int, default=None, metavar="PX",
                   help="input side for checkpoints without stored preprocessing (default: 224)")
    p.add_argument("--strict-images", action="store_true", help="fail on unreadable images instead of skipping them")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    from mbv3_mobile.core.errors import UserError
    from mbv3_mobile.train.evaluate import evaluate, write_report

    checkpoint = args.checkpoint
    if checkpoint is None:
        from mbv3_mobile.train.zoo import ensure_model

        checkpoint = ensure_model(args.recipe or "default")
    if args.max_images is not None and args.max_images < 1:
        raise UserError(f"--max-images must be >= 1, got {args.max_images}")
    report = evaluate(checkpoint, args.dataset, split=args.split, max_images=args.max_images,
                      batch_size=args.batch_size, strict_images=args.strict_images, resolution=args.resolution)
    json_path, png_path = write_report(report, args.out)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.table())
        for note in report.notes:
            print(f"note: {note}")
        print(f"[mbv3] wrote {json_path} and {png_path}")
    return 0
