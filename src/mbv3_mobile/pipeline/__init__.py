"""Staged, cached pipelines declared as data (`mbv3_mobile/pipelines/*.toml`): the spec, the
runner (content-keyed, verified cache), the shared stages and publishing."""

from mbv3_mobile.pipeline.runner import StageContext, StageResult, cache_dir, run_pipeline
from mbv3_mobile.pipeline.spec import GateFailure, PipelineError, PipelineSpec, load_pipeline

__all__ = ["GateFailure", "PipelineError", "PipelineSpec", "StageContext", "StageResult", "cache_dir", "load_pipeline",
           "run_pipeline"]
