"""Running a .pte in the ExecuTorch Python runtime (fixed batch, chunked), on real images.

A program is exported for the batch of its example input (static shapes); the app artifact uses
batch 1, and evaluation runs that same artifact image by image, so the figures are measured on
exactly the file that ships. `run_pte` reads the program's batch from its metadata and pads the
last chunk, so a batched program works the same way."""

from __future__ import annotations

import os
import re

import torch

from mbv3_mobile.data.preprocess import check_model_input
from mbv3_mobile.export.executorch.lower import _as_bytes
from mbv3_mobile.graph import ExportError, first_line

_NATIVE_NOISE = re.compile(r"^\[(cpuinfo_utils\.cpp:\d+\]|threadpool\.cpp:\d+\] Resetting threadpool)")


class quiet_native_start:
    """ExecuTorch's C++ runtime prints cpuinfo probing lines to the process's stderr (fd 2) when it
    first starts its threadpool; they say nothing to the user. With MBV3_QUIET_NATIVE set (the CLI
    sets it unless --verbose), fd 2 is captured around the load and only other lines are passed on."""

    def __enter__(self):
        import sys
        import tempfile

        self.active = bool(os.environ.get("MBV3_QUIET_NATIVE"))
        if self.active:
            sys.stderr.flush()
            self.saved = os.dup(2)
            self.buffer = tempfile.TemporaryFile()
            os.dup2(self.buffer.fileno(), 2)
        return self

    def __exit__(self, *exc):
        if not self.active:
            return False
        import sys

        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.buffer.seek(0)
        kept = [line for line in self.buffer.read().decode(errors="replace").splitlines() if not _NATIVE_NOISE.match(line)]
        self.buffer.close()
        if kept:
            sys.stderr.write("\n".join(kept) + "\n")
        return False


def _load_method(program):
    from executorch.runtime import Runtime

    data = _as_bytes(program)
    try:
        with quiet_native_start():
            loaded = Runtime.get().load_program(data)
        with quiet_native_start():
            method = loaded.load_method("forward")
        # executorch.runtime.Method keeps no reference to its Program (which owns the .pte bytes):
        # once the Program is collected, execute() reads freed memory and segfaults at random.
        method._keep_program_alive = loaded
        return method
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"the ExecuTorch runtime cannot load this program: {first_line(exc)}") from exc


def program_input_shape(program) -> tuple[int, ...]:
    """The fixed input shape (N, C, H, W) recorded in a .pte."""
    return tuple(_load_method(program).metadata.input_tensor_meta(0).sizes())


@torch.no_grad()
def run_pte(program, images: torch.Tensor, *, progress: bool = False) -> torch.Tensor:
    """Logits for normalised float images (N, 3, R, R) from the ExecuTorch Python runtime.

    `program`: LoweredProgram, .pte bytes or path. The program's fixed batch B is read from its
    metadata; images are fed in chunks of B (the last one padded, padding dropped)."""
    method = _load_method(program)
    shape = tuple(method.metadata.input_tensor_meta(0).sizes())
    check_model_input(images, shape, "this .pte")
    batch = shape[0]
    images = images.float().contiguous()
    outs = []
    starts = range(0, len(images), batch)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="ExecuTorch runtime", leave=False, dynamic_ncols=True)
    for s in starts:
        x = images[s : s + batch]
        n = len(x)
        if n < batch:
            x = torch.cat([x, x[-1:].expand(batch - n, *x.shape[1:])]).contiguous()
        outs.append(method.execute([x])[0][:n].clone())
    return torch.cat(outs)




def run_pte_on_dataset(program, dataset, preprocessing, *, chunk: int = 1000, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) for a whole uint8 dataset (e.g. the 10k Fashion-MNIST test set) in the runtime."""
    from mbv3_mobile.data.datasets import BatchTransform

    transform = BatchTransform(preprocessing)
    outs = []
    for s in range(0, len(dataset), chunk):
        outs.append(run_pte(program, transform(dataset.images[s : s + chunk]), progress=progress))
    return torch.cat(outs), dataset.labels.clone()

