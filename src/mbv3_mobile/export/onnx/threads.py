"""The ONNX `threads` stage: each `.ort` file timed in ONNX Runtime (CPU EP, the saved fusions
replayed, as an app opens it) at 1, 2, 4, ... usable cores of the export host; the pick
(`core.threads`, the bench's rule) goes into the manifest and the app snippets' intra-op threads."""

from __future__ import annotations

from mbv3_mobile.core.threads import host_identity
from mbv3_mobile.export.onnx.bench_open import open_ort_session
from mbv3_mobile.pipeline.runner import StageContext
from mbv3_mobile.pipeline.stages import time_threads


def threads(ctx: StageContext) -> dict:
    return time_threads(ctx, open_ort_session, ctx.upstream("ort_format").out("model"),
                        "ONNX Runtime (CPU EP, .ort with saved fusions)")


def threads_fingerprint(ctx: StageContext) -> dict:
    """A pick holds for the host it was measured on: another CPU or core budget measures again."""
    return host_identity()
