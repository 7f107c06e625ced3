"""The bench's openers for ONNX models (imported alone in the bench's fresh-process load/RSS
probe, so they import only onnxruntime, not torch)."""

from __future__ import annotations


def open_session(path: str, threads: int, x, *, replay: bool = False):
    """(one inference -> logits, objects to keep alive) for `x` (numpy (1, 3, R, R) float32)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if replay:
        opts.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    return (lambda: sess.run(None, feed)[0]), [sess]


def open_ort_session(path: str, threads: int, x):
    """An ORT-format model as an app opens it: the CPU fusions it saved, replayed."""
    return open_session(path, threads, x, replay=True)
