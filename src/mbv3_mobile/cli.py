"""`mbv3` command line. Each subcommand imports its module lazily so `mbv3 info` stays fast."""

from __future__ import annotations

import argparse
import sys

from .config import ARCHS, WIDTHS


def add_model_args(p: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    p.add_argument("--arch", choices=ARCHS, default="small" if defaults else None)
    p.add_argument("--width", type=float, choices=WIDTHS, default=1.0 if defaults else None)
    p.add_argument("--resolution", type=int, default=224 if defaults else None)
    p.add_argument("--num-classes", type=int, default=1000 if defaults else None)
    p.add_argument("--minimal", action="store_true", help="TF-slim minimalistic variant (no SE/h-swish, 3x3 only)")


def cmd_info(args: argparse.Namespace) -> int:
    import json

    from .model import build_model
    from .profile import profile_model

    if args.checkpoint:
        from .checkpoint import load_checkpoint

        model = load_checkpoint(args.checkpoint).model
    else:
        model = build_model(arch=args.arch, width=args.width, num_classes=args.num_classes, minimal=args.minimal)
    prof = profile_model(model, args.resolution)
    if args.json:
        print(json.dumps({"model": model.config.name, **model.config.to_dict(), "resolution": prof.resolution,
                          "params": prof.params, "macs": prof.macs}, indent=2))
        return 0
    print(f"{model.config.name}  num_classes={model.config.num_classes}  input 1x3x{args.resolution}x{args.resolution}")
    print(prof.table())
    print(f"params {prof.params:,}  MACs {prof.macs / 1e6:.1f} M (conv + linear multiply-adds, "
          "torch.utils.flop_counter FLOPs / 2)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mbv3", description="MobileNetV3 from PyTorch to phones")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="params / MACs / layer table of a variant or a checkpoint")
    add_model_args(p)
    p.add_argument("--checkpoint", help="describe this checkpoint instead (any supported format)")
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(func=cmd_info)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    """Subcommands owned by other modules (each module registers its own parser)."""
    from . import bench, evaluate, model_card, parity, pipeline, train

    return [train.register_cli, evaluate.register_cli, pipeline.register_cli, parity.register_cli,
            model_card.register_cli, bench.register_cli]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from .errors import UserError

    try:
        status = args.func(args, rest) if getattr(args, "passthrough", False) else args.func(args)
        return int(status or 0)
    except UserError as exc:
        print(f"mbv3 {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
