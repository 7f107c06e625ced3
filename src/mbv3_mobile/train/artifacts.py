"""What a training run writes besides its checkpoint: metrics.jsonl / metrics.csv, curves.png,
and its progress output."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from mbv3_mobile.core.atomic import atomic_path, write_text_atomic


def _write_metrics(out: Path, metrics: list[dict]) -> None:
    write_text_atomic(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))
    columns = list(dict.fromkeys(k for m in metrics for k in m))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(metrics)
    write_text_atomic(out / "metrics.csv", buf.getvalue())


def _progress(iterable, *, enabled: bool, desc: str, **kwargs):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, dynamic_ncols=True, **kwargs)


def _log(progress: bool, line: str) -> None:
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(line)
    else:
        print(line, flush=True)


def plot_curves(metrics: list[dict], path: Path, curves: dict) -> None:
    """Loss (left) and the task's rates (right) per epoch; `curves` names them (a trainer's CURVES:
    loss axis label, train-rate label, {validation key: label}, rate axis label)."""
    if not metrics:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [m["epoch"] for m in metrics]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [m["train_loss"] for m in metrics], marker="o", label="train")
    ax1.plot(epochs, [m["val_loss"] for m in metrics], marker="o", label="val")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel(curves["loss"])
    ax1.legend()
    ax2.plot(epochs, [100 * m["train_acc"] for m in metrics], marker="o", label=curves["train"])
    for key, label in curves["val"].items():
        ax2.plot(epochs, [100 * m[key] for m in metrics], marker="o", label=label)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(curves["axis"])
    ax2.legend()
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
