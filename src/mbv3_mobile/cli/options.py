"""A pipeline's parameters as command-line options, typed from their declared defaults and
explained by the pipeline file's `[help]` table."""

from __future__ import annotations

import argparse
from typing import Any

from mbv3_mobile.pipeline.spec import PipelineSpec


def _default_text(default: Any) -> str:
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, list):
        return ",".join(map(str, default)) or "(none)"
    if default in ("", None):
        return "(empty)"
    return str(default)


def _list(text: str) -> list[str]:
    return [v for v in text.split(",") if v]


def pipeline_parser(spec: PipelineSpec, prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=spec.title)
    for name, default in spec.params.items():
        if isinstance(default, dict):
            continue  # tables are set in the pipeline file, not on the command line
        flag = "--" + name.replace("_", "-")
        # argparse %-formats help strings: a pipeline file's "99.5 % of ..." must come out as written
        text = f"{spec.help.get(name, '')} (default: {_default_text(default)})".replace("%", "%%")
        if isinstance(default, bool):
            parser.add_argument(flag, dest=name, default=None, action=argparse.BooleanOptionalAction, help=text)
        elif isinstance(default, list):
            parser.add_argument(flag, dest=name, default=None, type=_list, metavar="A,B", help=text)
        else:
            typ = type(default) if default not in ("", None) else str
            metavar = {int: "N", float: "X"}.get(typ, "VALUE")
            parser.add_argument(flag, dest=name, default=None, type=typ, metavar=metavar, help=text)
    return parser


def parse_overrides(spec: PipelineSpec, argv: list[str], prog: str | None = None) -> dict[str, Any]:
    """`--calib-images 100 --quant fp32,ptq --no-progress` -> typed values from the pipeline's params."""
    parser = pipeline_parser(spec, prog or f"mbv3 {spec.name}")
    args = parser.parse_args(argv)
    return {k: v for k, v in vars(args).items() if v is not None}
