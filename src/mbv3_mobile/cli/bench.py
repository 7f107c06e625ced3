"""`mbv3 bench`: latency / memory / export / training benchmark of every runtime on this host."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("bench", help="latency/memory/export/training benchmark of every runtime on this host",
                       add_help=False)
    p.set_defaults(func=run, passthrough=True)


def run(args, rest: list[str]) -> int:
    from mbv3_mobile.cli.options import parse_overrides
    from mbv3_mobile.crossformat.bench.run import run_bench
    from mbv3_mobile.pipeline.spec import load_pipeline

    run_bench(parse_overrides(load_pipeline("bench"), rest, prog="mbv3 bench"), progress=not args.quiet)
    return 0
