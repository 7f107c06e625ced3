"""DDP plumbing for the training loop: process group set-up (gloo on CPU, nccl on GPU), end-of-epoch
synchronisation, and the check that every rank ends with the same weights."""

from __future__ import annotations

import hashlib
import os

import torch
import torch.distributed as dist
from torch import nn


def _dist_setup() -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether this call created the process group)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    created = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        created = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local), created
    return rank, world, torch.device("cpu"), created


def state_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over sorted keys, dtypes, shapes and raw bytes: equal iff the tensors are bit-identical."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _sync_epoch_end(model: nn.Module, ema, stats: torch.Tensor) -> None:
    """DDP keeps parameters identical but BN buffers drift per rank (each sees its own batches):
    take rank 0's, so every rank (and a resume) continues from one state. Sum the epoch's stats."""
    for module in (model, ema):
        if module is not None:
            for buf in module.buffers():
                dist.broadcast(buf, src=0)
    dist.all_reduce(stats)


def _check_ranks_agree(model, ema, final_model, world: int) -> list[dict]:
    """Every rank's fingerprints of raw, EMA and final weights; in DDP they must all be equal."""
    mine = {"model": state_fingerprint(model.state_dict()), "final": state_fingerprint(final_model.state_dict())}
    if ema is not None:
        mine["ema"] = state_fingerprint(ema.state_dict())
    if world == 1:
        return [mine]
    everyone: list = [None] * world
    dist.all_gather_object(everyone, mine)
    if any(f != everyone[0] for f in everyone):
        raise RuntimeError(f"DDP ranks ended with different weights: {everyone}")
    return everyone


