"""The format registry, as torchvision registers models: each format folder under `export/`
registers one `FormatSpec` in its `__init__.py`; parity, the bench, the CLI, the nox sessions
(through the pipeline files) and the README's format table iterate it. A published folder's
manifest records its format's facts (`FormatSpec.describe`), so the model card needs no registry.

A new format is one folder (`export/<name>/` with its `__init__.py` registration, stages and
runtime), one pipeline file (`pipelines/NN_<pipeline>.toml`) and nothing else: discovery imports
every sub-package of `mbv3_mobile.export` by name.

Hooks are "module:function" strings, resolved only when used, so listing formats imports no
converter or runtime.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from mbv3_mobile.core.errors import UserError
from mbv3_mobile.core.registry import Registry


class FormatError(UserError):
    """An unknown format name, or a format whose registration is incomplete."""


@dataclass(frozen=True)
class FormatSpec:
    name: str  # registry key, also the row prefix in parity/bench (e.g. "executorch")
    pipeline: str  # the pipeline that builds it (pipelines/*.toml `name`), e.g. "android"
    manifest_id: str  # manifest.json "format"
    title: str
    variants_param: str  # the pipeline's list parameter that picks variants ("quant", "variants")
    artifact: str  # hook (params, variant) -> published file name of that variant
    verify_runtime: str  # what the verify stages run, in words (model card)
    parity_entries: str  # hook (results) -> [verify.compare.Candidate]
    bench_runtimes: str | None = None  # hook (results) -> [crossformat.bench runtime rows]
    harness_target: str | None = None  # mobile_harness target that runs its artifacts on a device
    app_platform: str = ""  # Android, iOS, any
    extensions: tuple[str, ...] = field(default_factory=tuple)
    tasks: tuple[str, ...] = ("classification",)  # the tasks (tasks.registry) it can export

    def require_task(self, task: str) -> None:
        """Refuse, before any stage, a task this format cannot export yet."""
        if task not in self.tasks:
            raise FormatError(f"the {self.pipeline} pipeline ({self.title}) exports {', '.join(self.tasks)} models, "
                              f"not {task}")

    def describe(self) -> dict:
        """What a published manifest records of its format (`export_format`), so readers of the
        folder (the model card, tools) need no registry: pipeline, runtimes, device target."""
        return {"name": self.name, "id": self.manifest_id, "title": self.title, "pipeline": self.pipeline,
                "variants_param": self.variants_param, "verify_runtime": self.verify_runtime,
                "harness_target": self.harness_target, "bench": self.bench_runtimes is not None,
                "platform": self.app_platform}

    def hook(self, name: str) -> Callable:
        dotted = getattr(self, name)
        if not dotted:
            raise FormatError(f"format {self.name!r} has no {name} hook")
        module, _, attr = dotted.partition(":")
        return getattr(importlib.import_module(module), attr)


_REGISTRY: Registry[FormatSpec] = Registry("mbv3_mobile.export", "format", FormatError)


def register_format(spec: FormatSpec) -> FormatSpec:
    return _REGISTRY.register(spec.name, spec)


def list_formats() -> list[FormatSpec]:
    """Every registered format, in pipeline-file order (android, ios, onnx, ...)."""
    from mbv3_mobile.pipeline.spec import pipeline_files

    order = {name: i for i, name in enumerate(pipeline_files())}
    return sorted(_REGISTRY.specs(), key=lambda s: (order.get(s.pipeline, len(order)), s.name))


def get_format(name: str) -> FormatSpec:
    """A format by registry name or by its pipeline name (`android` -> executorch)."""
    for spec in _REGISTRY.specs():
        if name in (spec.name, spec.pipeline):
            return spec
    known = ", ".join(f"{s.pipeline} ({s.name})" for s in list_formats())
    raise FormatError(f"unknown format {name!r}: known formats are {known}")


def format_table() -> str:
    """The README's format table, generated from the registry (a test keeps the README in step)."""
    lines = ["| format | pipeline | nox session | platform | tasks | artifacts | verified with |",
             "|---|---|---|---|---|---|---|"]
    for s in list_formats():
        lines.append(f"| {s.title} | `{s.pipeline}` | `nox -s export_{s.pipeline}` | {s.app_platform} | "
                     f"{', '.join(s.tasks)} | {', '.join(f'`{e}`' for e in s.extensions)} | {s.verify_runtime} |")
    return "\n".join(lines)
