"""The task registry, beside the format registry (as torchvision keeps `models.segmentation` and
`models.detection` beside its classifiers): each task folder under `tasks/` registers one
`TaskSpec` in its `__init__.py`. A task says what a MobileNetV3 for it is and how its exports are
checked: the model builders and checkpoint layouts it loads, what the network outputs, the
reference outputs and the figures that compare a format's outputs with them, the gate tables that
judge those figures, and the app code that turns the outputs into a result.

Formats and the shared stages ask the task (`get_task(resolved.task)`); a task never imports a
format. A new task is one folder (`tasks/<name>/`), one registration and its gate tables in the
pipeline files (`[gates.<name>.<table>]`). Hooks are "module:function" strings, resolved on use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from mbv3_mobile.core.errors import UserError
from mbv3_mobile.core.registry import Registry


class TaskError(UserError):
    """An unknown task, or a task a format or checkpoint does not support."""


@dataclass(frozen=True)
class TaskSpec:
    """A task and the three modules that implement it, each with a fixed set of names:

    outputs:  load_checkpoint(path, *, arch, width) -> model.checkpoint.Checkpoint;
              output_spec(resolved) -> the manifest's "output"; reference(model, images) -> eager outputs;
              pictures(given=, images=, labels=, pre=, purpose=, split=, limit=, seed=, what=) -> the real
              pictures (with the task's labels where there are any) a check or a calibration uses
    figures:  compare(reference, candidate, labels | None) -> figures; table({row: figures}) -> markdown;
              text(figures) -> lines for a gate-failure message; parity_table(rows) / parity_plot(rows, path);
              KEYS (figures every verify stage records), LABELLED_KEYS (only with labelled pictures);
              optionally streamed(reference_fn, candidate_fn, images, labels, num_classes=) -> figures,
              computed a batch at a time (for outputs too large to hold for every picture)
    snippets: output_text(resolved) -> one line for an app README; kotlin_result(var), swift_result(var),
              python_result(var) -> the expression that turns output `var` into the app's result
    """

    name: str  # registry key, e.g. "classification"; gate tables live under [gates.<name>.<table>]
    title: str
    model_builders: tuple[str, ...]  # public builders of its networks, e.g. "mbv3_mobile:mobilenet_v3_large"
    checkpoint_layouts: tuple[str, ...]  # the state_dict layouts it loads (ours, torchvision, timm, ...)
    outputs: str
    figures: str
    snippets: str
    default_recipe: str = "default"  # the shipped model (train.zoo) a pipeline exports when given no checkpoint

    def module(self, part: str) -> ModuleType:
        """The task's `outputs`, `figures` or `snippets` module (imported on first use)."""
        return importlib.import_module(getattr(self, part))

    def gate_table(self, base: str, labelled: bool, tables, *, random_weights: bool = False) -> str:
        """The table judging a variant's figures: `<task>.<base>` for labelled pictures, its
        label-free form `<task>.<base>_unlabelled` otherwise (where the pipeline declares one), and
        `<task>.<base>_random` for a model whose checkpoint says its weights are random (the bench's
        latency workloads), where the pipeline declares one: such a model has no confident
        predictions, so agreement under int8 measures nothing, while SNR still catches a broken program."""
        name = f"{self.name}.{base}"
        if random_weights and f"{name}_random" in tables:
            return f"{name}_random"
        unlabelled = f"{name}_unlabelled"
        return unlabelled if not labelled and unlabelled in tables else name


_REGISTRY: Registry[TaskSpec] = Registry("mbv3_mobile.tasks", "task", TaskError)
DEFAULT_TASK = "classification"


def register_task(spec: TaskSpec) -> TaskSpec:
    return _REGISTRY.register(spec.name, spec)


def list_tasks() -> list[TaskSpec]:
    return sorted(_REGISTRY.specs(), key=lambda t: (t.name != DEFAULT_TASK, t.name))


def get_task(name: str | None) -> TaskSpec:
    """A task by name; empty means the default (classification)."""
    name = name or DEFAULT_TASK
    tasks = {t.name: t for t in list_tasks()}
    if name not in tasks:
        raise TaskError(f"unknown task {name!r}: known tasks are {', '.join(tasks)}")
    return tasks[name]


def checkpoint_task(path) -> TaskSpec:
    """The task a checkpoint's metadata names; a file without one (e.g. a torchvision .pth): the default."""
    from mbv3_mobile.model.checkpoint import checkpoint_extra

    return get_task(checkpoint_extra(path).get("task"))


def load_task_checkpoint(path, *, arch: str | None = None, width: float | None = None):
    """Any of our checkpoints as its own task's model (`checkpoint_task`)."""
    return checkpoint_task(path).module("outputs").load_checkpoint(path, arch=arch, width=width)
