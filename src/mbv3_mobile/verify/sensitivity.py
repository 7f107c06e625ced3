"""Where a reduced-precision variant loses fidelity, layer by layer: the SNR (dB) of every module's
output against eager fp32 on the same pictures, for each int8 / fp16 / compressed row that exposes
per-module outputs (the drift-localisation providers: ExecuTorch ETDump, ONNX node taps, the MIL
interpreter). A drop from one module to the next is where error enters; a flat stretch is where it
only travels. Format-neutral, like `drift`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mbv3_mobile.verify.compare import Candidate
from mbv3_mobile.verify.drift import eager_module_outputs, folded_batchnorm

# The modules whose outputs say something (containers repeat their last child's value).
KINDS = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d, torch.nn.Hardswish, torch.nn.Hardsigmoid,
         torch.nn.ReLU, torch.nn.AdaptiveAvgPool2d)


@dataclass
class LayerFidelity:
    module: str
    kind: str
    snr_db: float
    entered_db: float  # SNR lost at this module (previous compared module's SNR minus this one's; >= 0 means loss)


def _db(signal: float, noise: float) -> float:
    return math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-300) / noise)


def layer_fidelity(model: torch.nn.Module, entry: Candidate, images: torch.Tensor) -> list[LayerFidelity]:
    """Per-module SNR of `entry` against eager over `images` (one picture at a time: the providers
    take one), in execution order."""
    if entry.module_outputs is None:
        raise ValueError(f"{entry.name}: this runtime exposes no per-module outputs")
    modules = dict(model.named_modules())
    sums: dict[str, list[float]] = {}
    for i in range(len(images)):
        image = images[i : i + 1]
        eager = eager_module_outputs(model, image)
        got = folded_batchnorm(model, entry.module_outputs(image))
        for path, ref in eager.items():
            value = got.get(path)
            if value is None or value.size != ref.size or not isinstance(modules.get(path), KINDS):
                continue
            ref64 = ref.astype(np.float64)
            s = sums.setdefault(path, [0.0, 0.0])
            s[0] += float((ref64**2).sum())
            s[1] += float(((value.astype(np.float64).reshape(ref.shape) - ref64) ** 2).sum())
    out, previous = [], None
    for path, (signal, noise) in sums.items():
        snr = _db(signal, noise)
        entered = 0.0 if previous is None or math.isinf(previous) or math.isinf(snr) else previous - snr
        out.append(LayerFidelity(path, type(modules[path]).__name__, snr, entered))
        previous = snr
    return out


def worst_entries(layers: list[LayerFidelity], limit: int = 5) -> list[LayerFidelity]:
    """The modules where the most SNR is lost (error enters), largest first."""
    return sorted(layers, key=lambda f: -f.entered_db)[:limit]


def markdown(report: dict[str, list[LayerFidelity]], pictures: int) -> str:
    lines = ["## Sensitivity: where each variant loses fidelity", "",
             f"SNR of every module's output against eager fp32 on {pictures} pictures (dB; higher is closer). "
             "'lost' is the SNR given up at that module: where error enters.", ""]
    for name, layers in report.items():
        final = layers[-1].snr_db if layers else float("nan")
        lines += [f"### {name}", "", f"{len(layers)} modules compared; last module {final:.1f} dB. Largest losses: "
                  + ", ".join(f"`{f.module}` {f.entered_db:.1f} dB" for f in worst_entries(layers)), "",
                  "| module | kind | SNR dB | lost dB |", "|---|---|---|---|"]
        lines += [f"| {f.module} | {f.kind} | {f.snr_db:.1f} | {f.entered_db:+.1f} |" for f in layers]
        lines.append("")
    return "\n".join(lines)


def plot(report: dict[str, list[LayerFidelity]], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.5))
    for name, layers in report.items():
        finite = [(i, f.snr_db) for i, f in enumerate(layers) if math.isfinite(f.snr_db)]
        if finite:
            ax.plot([i for i, _ in finite], [v for _, v in finite], marker=".", label=name)
    longest = max(report.values(), key=len, default=[])
    step = max(1, len(longest) // 30)
    ax.set_xticks(range(0, len(longest), step))
    ax.set_xticklabels([f.module for f in longest][::step], rotation=90, fontsize=6)
    ax.set_ylabel("SNR vs eager fp32 (dB)")
    ax.set_title("Per-module fidelity (execution order)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
