"""`mbv3` command line: argparse lives here and only here. Each subcommand module imports the
library lazily, so `mbv3 --help` and `mbv3 info` stay fast."""

from __future__ import annotations

import argparse
import sys

from mbv3_mobile.cli import bench, card, evaluate, export, info, parity, train
from mbv3_mobile.cli.output import configure_output

COMMANDS = (info, train, evaluate, export, parity, bench, card)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mbv3", description="MobileNetV3 from PyTorch to phones: train, export "
                                     "(Android / iOS / ONNX), verify every format against eager PyTorch, benchmark.")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true",
                           help="only results and errors: no progress bars or stage lines")
    verbosity.add_argument("-v", "--verbose", action="store_true",
                           help="also show the toolchain's own warnings and log lines (hidden by default)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    configure_output(quiet=args.quiet, verbose=args.verbose)
    from mbv3_mobile.core.errors import UserError

    try:
        status = args.func(args, rest) if getattr(args, "passthrough", False) else args.func(args)
        return int(status or 0)
    except UserError as exc:
        print(f"mbv3 {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mbv3 {args.command}: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - anything else is a bug: say so, keep the traceback for the report
        where = _write_traceback(args.command)
        print(f"mbv3 {args.command}: internal error (a bug in mbv3-mobile, not in your input): "
              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; traceback written to {where}; "
              "please report it with that file", file=sys.stderr)
        return 70


def _write_traceback(command: str) -> str:
    """The current exception's traceback in a new file under the system temp folder; its path."""
    import tempfile
    import traceback

    with tempfile.NamedTemporaryFile("w", prefix=f"mbv3-{command}-", suffix=".traceback.txt", delete=False) as f:
        f.write(f"mbv3 {' '.join(sys.argv[1:])}\n\n")
        traceback.print_exc(file=f)
        return f.name


if __name__ == "__main__":
    sys.exit(main())
