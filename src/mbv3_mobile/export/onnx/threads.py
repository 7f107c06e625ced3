"""The ONNX `threads` stage: each `.ort` file timed in ONNX Runtime (CPU EP, the saved fusions
replayed, as an app opens it) at 1, 2, 4, ... usable cores of the export host; the pick
(`core.threads`, the bench's rule) goes into the manifest and the app snippets' intra-op threads."""

from __future__ import annotations

import numpy as np

from mbv3_mobile.core.threads import host_identity, measure_threads
from mbv3_mobile.export.onnx.bench_open import open_ort_session
from mbv3_mobile.pipeline.runner import StageContext


def threads(ctx: StageContext) -> dict:
    model = str(ctx.inputs["ort_format"].out("model"))
    r = ctx.inputs["resolve"].meta["preprocessing"]["resolution"]
    # A CNN's latency does not depend on the pixel values: a fixed normal tensor stands in for a picture.
    x = np.random.default_rng(0).standard_normal((1, 3, r, r)).astype(np.float32)

    def open_at(n: int):
        run, keep = open_ort_session(model, n, x)
        return lambda: (run(), keep)

    measured = measure_threads(open_at, runtime="ONNX Runtime (CPU EP, .ort with saved fusions)")
    ctx.log(f"use {measured['recommended']} thread(s): "
            + ", ".join(f"{n}: {ms:.2f} ms" for n, ms in measured["p50_ms"].items()))
    return {"threads": measured}


def threads_fingerprint(ctx: StageContext) -> dict:
    """A pick holds for the host it was measured on: another CPU or core budget measures again."""
    return host_identity()
