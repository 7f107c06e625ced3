"""The bench's opener for a .pte (imported alone in the bench's fresh-process load/RSS probe, so it
imports only the ExecuTorch runtime)."""

from __future__ import annotations


def open_pte(path: str, threads: int, x):
    """(one inference -> logits, objects to keep alive) for `x` (numpy (1, 3, R, R) float32)."""
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    # XNNPACK takes ExecuTorch's threadpool when a method is loaded: size it first.
    portable_lib._unsafe_reset_threadpool(threads)
    program = Runtime.get().load_program(str(path))
    method = program.load_method("forward")
    xt = torch.from_numpy(x)
    return (lambda: method.execute([xt])[0].numpy()), [program, method, xt]
