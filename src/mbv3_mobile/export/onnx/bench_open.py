"""The bench's opener for an ONNX model (imported alone in the bench's fresh-process load/RSS
probe, so it imports only onnxruntime, not torch)."""

from __future__ import annotations


def open_session(path: str, threads: int, x):
    """(one inference -> logits, objects to keep alive) for `x` (numpy (1, 3, R, R) float32)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    return (lambda: sess.run(None, feed)[0]), [sess]
