"""The one comparator: figures of a candidate's logits against a reference's on the same pictures,
and gates on those figures. Every verify stage, the parity matrix, the manifest and the model card
use these names (fractions everywhere; one name per figure):

    images            pictures compared
    max_abs_dlogit    max |candidate - reference| over every logit (worst case)
    mean_abs_dlogit   mean of the same
    min_cosine        smallest per-picture cosine similarity of the logit vectors
    snr_db            10 log10(sum reference^2 / sum (candidate - reference)^2), all pictures pooled
    top1_agreement    share of pictures whose top-1 class is the reference's
    reference_top1    reference accuracy (labelled pictures only)
    top1              candidate accuracy (labelled pictures only)
    top1_drop         reference_top1 - top1, from paired counts (labelled pictures only)

Statistics (`bounds`): rates are estimates from a sample of pictures, so each comes with one-sided
95 % bounds: Wilson score bounds for `top1_agreement`, Tango's score bounds for the paired
difference `top1_drop` (McNemar's setting: only pictures on which the two models disagree about
correctness inform it; exact at zero counts, unlike the Wald interval), and a seeded bootstrap
for `snr_db`. A gate on a rate passes when the bound on the safe side clears the limit, fails
when the bound on the other side does not reach it, and is *inconclusive* otherwise, saying how
many pictures would resolve it. A rate gate at its boundary (agreement = 1.0, "every picture")
and the worst-case figures (max |dlogit|, min cosine) are judged on the value itself.

One metric per function, as ExecuTorch devtools' comparators do; `compare_logits` composes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mbv3_mobile.verify.gates import CONFIDENCE, tango_bounds, wilson_bounds


@dataclass
class Candidate:
    """One thing compared with eager PyTorch fp32: a format's artifact in its runtime (or an eager
    int8 graph). `gate` names the gate table that judges it (fp32, fp16, int8, compressed)."""

    name: str  # e.g. "pte ptq (ExecuTorch)"
    gate: str
    format: str  # registry name of the format it belongs to
    run: Callable[[torch.Tensor], torch.Tensor]  # normalised (N,3,R,R) -> logits (N,C)
    module_outputs: Callable[[torch.Tensor], dict[str, np.ndarray]] | None = None  # one picture -> {module: output}
    note: str = ""
    skipped: str | None = None  # why this candidate could not run here


# ---------------------------------------------------------------- metrics (one per function)


def max_abs_dlogit(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    return (candidate.double() - reference.double()).abs().max().item()


def mean_abs_dlogit(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    return (candidate.double() - reference.double()).abs().mean().item()


def min_cosine(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(candidate.double(), reference.double(), dim=1).min().item()


def snr_db(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """Signal-to-noise ratio of the logits in dB, pooled over pictures (as quantization tools report)."""
    signal, noise = _snr_terms(reference, candidate)
    return power_ratio_db(signal.sum(), noise.sum())


def top1_agreement(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    return (candidate.argmax(1) == reference.argmax(1)).double().mean().item()


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).double().mean().item()


def _snr_terms(reference: torch.Tensor, candidate: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    ref = reference.double()
    return (ref**2).sum(1).numpy(), ((candidate.double() - ref) ** 2).sum(1).numpy()


def power_ratio_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise); inf when there is no noise."""
    if noise <= 0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-300) / noise)


# ---------------------------------------------------------------- bounds


def bootstrap_snr_bounds(reference: torch.Tensor, candidate: torch.Tensor, *, reps: int = 1000,
                         seed: int = 0) -> tuple[float, float]:
    """One-sided bounds (lower, upper) of `snr_db` from a seeded bootstrap over pictures (deterministic)."""
    signal, noise = _snr_terms(reference, candidate)
    n = len(signal)
    value = snr_db(reference, candidate)
    if n < 2 or noise.sum() <= 0:
        return value, value
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(reps, n))
    values = 10 * np.log10(np.maximum(signal[idx].sum(1), 1e-300) / np.maximum(noise[idx].sum(1), 1e-300))
    return float(np.quantile(values, 1 - CONFIDENCE)), float(np.quantile(values, CONFIDENCE))


# ---------------------------------------------------------------- figures


def compare_logits(reference: torch.Tensor, candidate: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
    """Every figure of `candidate` against `reference` on the same pictures; accuracy figures only
    when `labels` are given. `bounds` holds the one-sided bounds of the rates, `counts` the raw
    counts they come from (so any reader can recompute them)."""
    reference, candidate = reference.detach(), candidate.detach()
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: reference {tuple(reference.shape)}, candidate {tuple(candidate.shape)}")
    n = len(reference)
    agree = int((candidate.argmax(1) == reference.argmax(1)).sum())
    fig: dict = {
        "images": n,
        "max_abs_dlogit": max_abs_dlogit(reference, candidate),
        "mean_abs_dlogit": mean_abs_dlogit(reference, candidate),
        "min_cosine": min_cosine(reference, candidate),
        "snr_db": snr_db(reference, candidate),
        "top1_agreement": agree / n,
        "labelled": labels is not None,
    }
    counts = {"agree": agree}
    bounds = {"top1_agreement": list(wilson_bounds(agree, n)),
              "snr_db": list(bootstrap_snr_bounds(reference, candidate))}
    if labels is not None:
        ref_ok = reference.argmax(1) == labels
        cand_ok = candidate.argmax(1) == labels
        b = int((ref_ok & ~cand_ok).sum())  # only the reference is right
        c = int((~ref_ok & cand_ok).sum())  # only the candidate is right
        fig.update(reference_top1=int(ref_ok.sum()) / n, top1=int(cand_ok.sum()) / n, top1_drop=(b - c) / n)
        counts.update(reference_correct=int(ref_ok.sum()), correct=int(cand_ok.sum()), only_reference=b, only_candidate=c)
        bounds["top1_drop"] = list(tango_bounds(b, c, n))
    fig["counts"] = counts
    fig["bounds"] = bounds
    fig["confidence"] = CONFIDENCE
    return fig


