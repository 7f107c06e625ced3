"""`mbv3 info`: params / MACs / layer table of a variant or a checkpoint."""

from __future__ import annotations

import argparse

from mbv3_mobile.model.config import ARCHS, WIDTHS


def register(sub) -> None:
    p = sub.add_parser("info", help="params / MACs / layer table of a variant or a checkpoint",
                       description="Parameters, multiply-adds and a per-layer table of a MobileNetV3 variant "
                                   "(or of a checkpoint) at a given input resolution.")
    p.add_argument("--arch", choices=ARCHS, default="small", help="architecture (default: small)")
    p.add_argument("--width", type=float, choices=WIDTHS, default=1.0, help="width multiplier (default: 1.0)")
    p.add_argument("--resolution", type=int, default=224, metavar="PX", help="input side in pixels, >= 32 (default: 224)")
    p.add_argument("--num-classes", type=int, default=1000, metavar="N", help="classifier outputs (default: 1000)")
    p.add_argument("--minimal", action="store_true", help="TF-slim minimalistic variant (no SE/h-swish, 3x3 only)")
    p.add_argument("--checkpoint", metavar="FILE", help="describe this checkpoint instead (any supported format)")
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from mbv3_mobile.model.flops import profile_model
    from mbv3_mobile.model.network import build_model

    if args.checkpoint:
        from mbv3_mobile.model.checkpoint import load_checkpoint

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
