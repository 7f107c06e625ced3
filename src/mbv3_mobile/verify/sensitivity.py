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

from mbv3_mobile.verify.compare import Candidate, power_ratio_db
from mbv3_mobile.verify.drift import eager_module_outputs, folded_batchnorm

# The modules whose outputs say something (containers repeat their last child's value).
KINDS = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d, torch.nn.Hardswish, torch.nn.Hardsigmoid,
         torch.nn.ReLU, torch.nn.AdaptiveAvgPool2d)


@dataclass
class LayerFidelity:
    module: str
    kind: str
    snr_db: float
    entered_db: float  # SNR lost at this module (its input's SNR minus its output's); nan where the input is not known


def layer_fidelity(model: torch.nn.Module, entry: Candidate, images: torch.Tensor) -> list[LayerFidelity]:
    """Per-module SNR of `entry` against eager over `images` (one picture at a time: the providers
    take one), in execution order."""
    if entry.module_outputs is None:
        raise ValueError(f"{entry.name}: this runtime exposes no per-module outputs")
    modules = dict(model.named_modules())
    sums: dict[str, list[float]] = {}
    eager_order: list[str] = []
    for i in range(len(images)):
        image = images[i : i + 1]
        eager = eager_module_outputs(model, image)
        eager_order = list(eager)
        got = folded_batchnorm(model, entry.module_outputs(image))
        for path, ref in eager.items():
            value = got.get(path)
            if value is None or value.size != ref.size or not isinstance(modules.get(path), KINDS):
                continue
            ref64 = ref.astype(np.float64)
            s = sums.setdefault(path, [0.0, 0.0])
            s[0] += float((ref64**2).sum())
            s[1] += float(((value.astype(np.float64).reshape(ref.shape) - ref64) ** 2).sum())
    # "Lost here" needs the module's input: taken as the previous module in eager order, only when
    # that one was compared too and feeds it (not across a gap, and not from the SE gate's
    # Hardsigmoid, whose output multiplies the main path rather than feeding the next module).
    order = [p for p in eager_order if isinstance(modules.get(p), KINDS)]
    out = []
    for path in (p for p in order if p in sums):
        snr = power_ratio_db(*sums[path])
        j = order.index(path) - 1
        while j >= 0 and order[j] not in sums and _folded(modules, order, j):
            j -= 1  # a conv folded into its BN reports nothing: its input is the module before it
        before = order[j] if j >= 0 else None
        feeds = before in sums and not isinstance(modules[before], torch.nn.Hardsigmoid)
        prev = power_ratio_db(*sums[before]) if feeds else math.nan
        entered = prev - snr if math.isfinite(prev) and math.isfinite(snr) else math.nan
        out.append(LayerFidelity(path, type(modules[path]).__name__, snr, entered))
    return out


def _folded(modules: dict, order: list[str], j: int) -> bool:
    return (isinstance(modules[order[j]], torch.nn.Conv2d) and j + 1 < len(order)
            and isinstance(modules[order[j + 1]], torch.nn.BatchNorm2d))


def worst_entries(layers: list[LayerFidelity], limit: int = 5) -> list[LayerFidelity]:
    """The modules where the most SNR is lost (error enters), largest first."""
    return sorted((f for f in layers if math.isfinite(f.entered_db) and f.entered_db > 0), key=lambda f: -f.entered_db)[:limit]


def markdown(report: dict[str, list[LayerFidelity]], pictures: int) -> str:
    lines = ["## Sensitivity: where each variant loses fidelity", "",
             f"SNR of every module's output against eager fp32 on {pictures} pictures (dB; higher is closer). "
             "'lost' is the SNR given up at that module: where error enters.", ""]
    for name, layers in report.items():
        final = layers[-1].snr_db if layers else float("nan")
        lines += [f"### {name}", "", f"{len(layers)} modules compared; last module {final:.1f} dB. Largest losses: "
                  + ", ".join(f"`{f.module}` {f.entered_db:.1f} dB" for f in worst_entries(layers)), "",
                  "| module | kind | SNR dB | lost dB |", "|---|---|---|---|"]
        lines += [f"| {f.module} | {f.kind} | {f.snr_db:.1f} | "
                  f"{f'{f.entered_db:+.1f}' if math.isfinite(f.entered_db) else '–'} |" for f in layers]
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
