"""The Android `threads` stage: the lowered .pte timed in the ExecuTorch runtime at 1, 2, 4, ...
usable cores of the export host; the pick (`core.threads`, the bench's rule) goes into the
manifest, the model card and the Kotlin snippet. A phone's own pick comes from the device harness
(`python -m mobile_harness run --target adb`), which applies the same rule."""

from __future__ import annotations

from mbv3_mobile.core.threads import host_identity, usable_cores
from mbv3_mobile.export.executorch.bench_open import open_pte
from mbv3_mobile.export.executorch.runtime import quiet_native_start
from mbv3_mobile.pipeline.runner import StageContext
from mbv3_mobile.pipeline.stages import time_threads


def threads(ctx: StageContext) -> dict:
    with quiet_native_start():  # the runtime logs every pool resize
        try:
            return time_threads(ctx, open_pte, ctx.upstream("lower").out("pte"),
                                "the ExecuTorch runtime (XNNPACK on its threadpool)")
        finally:  # leave the pool at its default size (every core) for the stages after this one
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(usable_cores())


def threads_fingerprint(ctx: StageContext) -> dict:
    """A pick holds for the host it was measured on: another CPU or core budget measures again."""
    return host_identity()
