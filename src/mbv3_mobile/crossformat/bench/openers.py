"""Openers for the bench's rows that belong to no export format: eager PyTorch and LiteRT (the
formats' own live in `export/<format>/bench_open.py`). Each is imported alone in the bench's
fresh-process probe, so it imports only its runtime."""

from __future__ import annotations


def open_eager(path: str, threads: int, x):
    import torch

    from mbv3_mobile.tasks import load_task_checkpoint

    torch.set_num_threads(threads)
    model = load_task_checkpoint(path).model.eval()
    xt = torch.from_numpy(x)

    def once():
        with torch.inference_mode():
            return model(xt).numpy()

    return once, [model, xt]


def open_litert(path: str, threads: int, x):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    inp, outp = it.get_input_details()[0], it.get_output_details()[0]

    def once():
        it.set_tensor(inp["index"], x)
        it.invoke()
        return it.get_tensor(outp["index"])

    return once, [it]
