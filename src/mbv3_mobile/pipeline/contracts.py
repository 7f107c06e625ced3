"""Typed views of what stages hand each other. A stage returns `X(...).to_meta()` (plain JSON in
its cache entry's stage.json, as before); a later stage reads `X.of(result)` instead of reaching
into nested dicts by string keys. One class per contract:

    ResolvedModel   the resolve stage: the model every later stage exports (task, config,
                    preprocessing, labels, source, size)
    ThreadsPick     a format's threads stage: the thread count to ship and what it was timed at
    VerifyFigures   a verify stage: figures, the gate table that judges them, the pictures, the
                    sha256 of the bytes measured (and, once the runner has judged them, the verdicts)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mbv3_mobile.data.preprocess import Preprocessing
from mbv3_mobile.pipeline.spec import PipelineError

# A verify stage of a task whose figures module has `write_examples` keeps a few pictures' outputs in
# this file of its folder (hashed with the stage's files); publishing draws them for the model card.
EXAMPLES_FILE = "examples.npz"


def _check(result, stage: str, keys) -> dict:
    meta = result.meta
    missing = [k for k in keys if k not in meta]
    if missing:
        raise PipelineError(f"stage {result.label} did not record {', '.join(missing)} (expected of a {stage} stage); "
                            "its cache entry is from another version: rerun with --force")
    return meta


@dataclass(frozen=True)
class ResolvedModel:
    """What `resolve` declares. `preprocessing` is the object; `to_meta` stores its dict."""

    task: str
    model_name: str
    config: dict
    preprocessing: Preprocessing
    preprocessing_rule: str
    labels: tuple[str, ...]
    labels_from: str
    source: str
    source_format: str
    source_sha256: str
    params: int
    macs: int
    train_summary: dict = field(default_factory=dict)
    weights: str = ""  # "random": a latency workload (bench), judged by the `_random` gate tables
    model_file: Path | None = None  # the resolved checkpoint (the stage's output "model"); not in the meta

    @property
    def resolution(self) -> int:
        return self.preprocessing.resolution

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    @property
    def default_name(self) -> str:
        """The published folder's name when `--name` is empty: `<model>_<resolution>px`."""
        return f"{self.model_name}_{self.resolution}px"

    def output_name(self, params: dict) -> str:
        return params.get("name") or self.default_name

    def to_meta(self) -> dict:
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model_file"}
        meta["preprocessing"] = self.preprocessing.to_dict()
        meta["labels"] = list(self.labels)
        return meta

    @classmethod
    def of(cls, result) -> ResolvedModel:
        meta = _check(result, "resolve", ("model_name", "config", "preprocessing", "labels", "source_sha256"))
        known = {f.name for f in fields(cls)} - {"model_file"}
        values = {k: v for k, v in meta.items() if k in known}
        values.setdefault("task", "classification")  # entries written before tasks existed
        values["preprocessing"] = Preprocessing.from_dict(meta["preprocessing"])
        values["labels"] = tuple(meta["labels"])
        model = result.out("model") if result.outs and "model" in result.outs else None
        return cls(**values, model_file=model)

    def load(self):
        """(model in eval mode, preprocessing, labels) from the resolved checkpoint."""
        from mbv3_mobile.tasks import get_task

        ck = get_task(self.task).module("outputs").load_checkpoint(self.model_file)
        return ck.model.eval(), ck.preprocessing, ck.labels

    def differences(self, other: ResolvedModel) -> list[str]:
        """What makes `other` another model than this one (labels, preprocessing, weights, task)."""
        def norm(v):  # JSON form on both sides: a cached stage's meta has lists where a fresh one has tuples
            return json.loads(json.dumps(v, default=str))

        pairs = (("labels", self.labels, other.labels),
                 ("preprocessing (resolution, mean, std)", self.preprocessing.to_dict(), other.preprocessing.to_dict()),
                 ("weights", self.source_sha256, other.source_sha256), ("task", self.task, other.task))
        return [f"{what}: {norm(b)} vs {norm(a)}" for what, a, b in pairs if norm(a) != norm(b)]


@dataclass(frozen=True)
class ThreadsPick:
    """What a `threads` stage declares (`core.threads.measure_threads`): the count to ship."""

    recommended: int
    p50_ms: dict[str, float]
    measured_on: dict
    runtime: str
    rounds: int
    speedup_vs_fewest: float = 1.0
    round_cv: dict[str, float] = field(default_factory=dict)
    rule: str = ""

    def to_meta(self) -> dict:
        return {"threads": self.to_manifest()}

    def to_manifest(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def of(cls, result) -> ThreadsPick:
        raw = _check(result, "threads", ("threads",))["threads"]
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


@dataclass(frozen=True)
class VerifyFigures:
    """What a verify stage declares; `judged` is filled in by the runner on every run (not cached)."""

    figures: dict
    gate: str | None  # the gate table judging `figures` (None: recorded, not judged)
    what: str
    pictures: dict = field(default_factory=dict)
    measured: dict = field(default_factory=dict)  # file -> sha256 of the bytes measured
    hint: str | None = None
    judged: list[dict] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # a format's own additions (e.g. the engine used)

    def to_meta(self) -> dict:
        meta = {"figures": self.figures, "gate": self.gate, "what": self.what, "pictures": self.pictures,
                "measured": self.measured, **self.extra}
        if self.hint:
            meta["hint"] = self.hint
        return meta

    @classmethod
    def of(cls, result) -> VerifyFigures:
        meta = _check(result, "verify", ("figures",))
        own = {"figures", "gate", "what", "pictures", "measured", "hint", "judged"}
        skip = own | {"stage", "variant", "key", "key_data", "seconds", "files"}
        return cls(figures=meta["figures"], gate=meta.get("gate"), what=meta.get("what", result.label),
                   pictures=meta.get("pictures") or {}, measured=meta.get("measured") or {}, hint=meta.get("hint"),
                   judged=list(meta.get("judged") or []), extra={k: v for k, v in meta.items() if k not in skip})

    @property
    def pictures_with_table(self) -> dict:
        """Which pictures judged the figures, and by which gate table (the manifest's `pictures`)."""
        return {**self.pictures, "gate_table": self.gate}
