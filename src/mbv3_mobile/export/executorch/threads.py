"""The Android `threads` stage: the lowered .pte timed in the ExecuTorch runtime at 1, 2, 4, ...
usable cores of the export host; the pick (`core.threads`, the bench's rule) goes into the
manifest, the model card and the Kotlin snippet. A phone's own pick comes from the device harness
(`python -m mobile_harness run --target adb`), which applies the same rule."""

from __future__ import annotations

import numpy as np

from mbv3_mobile.core.threads import host_identity, measure_threads, usable_cores
from mbv3_mobile.export.executorch.bench_open import open_pte
from mbv3_mobile.export.executorch.runtime import quiet_native_start
from mbv3_mobile.pipeline.runner import StageContext


def threads(ctx: StageContext) -> dict:
    pte = str(ctx.inputs["lower"].out("pte"))
    r = ctx.inputs["resolve"].meta["preprocessing"]["resolution"]
    # A CNN's latency does not depend on the pixel values: a fixed normal tensor stands in for a picture.
    x = np.random.default_rng(0).standard_normal((1, 3, r, r)).astype(np.float32)

    def open_at(n: int):
        run, keep = open_pte(pte, n, x)
        return lambda: (run(), keep)

    with quiet_native_start():  # the runtime logs every pool resize
        try:
            measured = measure_threads(open_at, runtime="the ExecuTorch runtime (XNNPACK on its threadpool)")
        finally:  # leave the pool at its default size (every core) for the stages after this one
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(usable_cores())
    ctx.log(f"use {measured['recommended']} thread(s): "
            + ", ".join(f"{n}: {ms:.2f} ms" for n, ms in measured["p50_ms"].items()))
    return {"threads": measured}


def threads_fingerprint(ctx: StageContext) -> dict:
    """A pick holds for the host it was measured on: another CPU or core budget measures again."""
    return host_identity()
