"""`mbv3 parity`: every format vs eager PyTorch on the same real pictures, gated."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("parity", help="every format vs eager PyTorch on the same real pictures, gated", add_help=False)
    p.set_defaults(func=run, passthrough=True)


def run(args, rest: list[str]) -> int:
    from mbv3_mobile.cli.options import parse_overrides
    from mbv3_mobile.crossformat.parity import run_parity
    from mbv3_mobile.pipeline.spec import load_pipeline

    overrides = parse_overrides(load_pipeline("parity"), rest, prog="mbv3 parity")
    run_parity(overrides, progress=not args.quiet)
    return 0
