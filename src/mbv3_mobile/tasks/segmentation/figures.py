"""How a segmentation model's exports are judged: a candidate's per-pixel logits against eager
fp32's on the same pictures, streamed one batch at a time (memory grows with the classes, not with
the pictures), then figures with one-sided 95 % bounds.

    images, pixels        pictures compared, pixels counted (labelled: the non-ignored ones)
    pixel_agreement       share of those pixels whose argmax class is the reference's
    min_picture_agreement the worst picture's pixel agreement (judged on the value)
    snr_db                logits SNR, pooled over every pixel of every picture
    max_abs_dlogit        max |candidate - reference| over every logit
    reference_miou, miou  mean IoU over the classes present (labelled pictures only)
    miou_drop             reference_miou - miou, paired (labelled pictures only; mIoU over the
                          classes present in the true masks, the same classes for both)
    reference_pixel_accuracy, pixel_accuracy, per_class_iou, reference_per_class_iou

Bounds are over pictures, not pixels: the pixels of one picture are not independent (a wrong
object boundary moves thousands of them together), so a binomial bound over pixels would be far
too narrow. Each bound is a seeded paired bootstrap (BCa) that resamples whole pictures and recomputes
the figure from the resampled counts (mIoU from summed confusion matrices, agreement and SNR as
ratios of sums). No library computes a picture-clustered bound of mIoU, hence this module; the
IoU arithmetic itself is the standard confusion-matrix one (as torchvision's reference scripts).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch

from mbv3_mobile.verify.compare import power_ratio_db
from mbv3_mobile.verify.gates import CONFIDENCE, format_value, markdown_table, with_bounds

IGNORE = 255  # VOC / Cityscapes: pixels labelled 255 count for nothing
KEYS = ("images", "pixels", "pixel_agreement", "min_picture_agreement", "snr_db", "max_abs_dlogit")
LABELLED_KEYS = ("miou", "reference_miou", "miou_drop", "pixel_accuracy", "reference_pixel_accuracy")
EXAMPLES_PICTURE = "masks.png"  # in a published folder: a few test pictures' masks, eager and every variant
BOOTSTRAP_REPS = 1000


@dataclass
class MaskComparison:
    """Per-picture sums, added batch by batch (`add`), turned into figures by `figures()`."""

    num_classes: int
    pixels: list[int] = field(default_factory=list)
    agree: list[int] = field(default_factory=list)
    signal: list[float] = field(default_factory=list)
    noise: list[float] = field(default_factory=list)
    max_abs: float = 0.0
    abs_sum: float = 0.0
    logits: int = 0
    confusion_ref: list[np.ndarray] = field(default_factory=list)  # per picture: C x C, [truth, predicted]
    confusion_cand: list[np.ndarray] = field(default_factory=list)

    @torch.no_grad()
    def add(self, reference: torch.Tensor, candidate: torch.Tensor, masks: torch.Tensor | None = None) -> None:
        """One batch: logits N x C x H x W of both, and optionally the true masks N x H x W."""
        if reference.shape != candidate.shape:
            raise ValueError(f"logit shapes differ: reference {tuple(reference.shape)}, candidate {tuple(candidate.shape)}")
        if reference.dim() != 4 or reference.shape[1] != self.num_classes:
            raise ValueError(f"expected N x {self.num_classes} x H x W logits, got {tuple(reference.shape)}")
        ref, cand = reference.double(), candidate.double()
        diff = (cand - ref).abs()
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.abs_sum += float(diff.sum())
        self.logits += diff.numel()
        ref_cls, cand_cls = ref.argmax(1), cand.argmax(1)
        if masks is not None:
            if masks.shape != ref_cls.shape:
                raise ValueError(f"masks are {tuple(masks.shape)}, the logits' pictures {tuple(ref_cls.shape)}")
            masks = masks.long()
            valid = masks != IGNORE
        else:
            valid = torch.ones_like(ref_cls, dtype=torch.bool)
        for i in range(len(ref)):
            v = valid[i]
            self.pixels.append(int(v.sum()))
            self.agree.append(int((ref_cls[i] == cand_cls[i])[v].sum()))
            self.signal.append(float((ref[i] ** 2).sum()))
            self.noise.append(float(((cand[i] - ref[i]) ** 2).sum()))
            if masks is not None:
                truth = masks[i][v]
                self.confusion_ref.append(confusion_matrix(truth, ref_cls[i][v], self.num_classes))
                self.confusion_cand.append(confusion_matrix(truth, cand_cls[i][v], self.num_classes))

    def figures(self, *, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> dict:
        n = len(self.pixels)
        if n == 0:
            raise ValueError("no pictures were compared")
        pixels, agree = np.array(self.pixels, np.float64), np.array(self.agree, np.float64)
        signal, noise = np.array(self.signal), np.array(self.noise)
        per_picture = np.divide(agree, pixels, out=np.ones_like(agree), where=pixels > 0)
        fig: dict = {
            "images": n, "pixels": int(pixels.sum()),
            "pixel_agreement": float(agree.sum() / max(pixels.sum(), 1)),
            "min_picture_agreement": float(per_picture.min()),
            "snr_db": power_ratio_db(signal.sum(), noise.sum()),
            "max_abs_dlogit": self.max_abs, "mean_abs_dlogit": self.abs_sum / max(self.logits, 1),
            "labelled": bool(self.confusion_ref),
        }
        # the same resampled pictures for every figure: paired, and the verdict is seeded
        weights = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=reps).astype(np.float64)
        bounds = {"pixel_agreement": _bca(lambda t: t[:, 0] / np.maximum(t[:, 1], 1), np.stack([agree, pixels], 1), weights),
                  "snr_db": _bca(lambda t: 10 * np.log10(np.maximum(t[:, 0], 1e-300) / np.maximum(t[:, 1], 1e-300)),
                                 np.stack([signal, noise], 1), weights)}
        if noise.sum() <= 0:
            bounds["snr_db"] = [fig["snr_db"], fig["snr_db"]]
        counts: dict = {"agree": int(agree.sum()), "pixels": int(pixels.sum())}
        if self.confusion_ref:
            c = self.num_classes
            ref_conf = np.stack(self.confusion_ref).reshape(n, c * c).astype(np.float64)
            cand_conf = np.stack(self.confusion_cand).reshape(n, c * c).astype(np.float64)
            ref_total, cand_total = ref_conf.sum(0).reshape(c, c), cand_conf.sum(0).reshape(c, c)
            fig.update(reference_miou=float(miou(ref_total)), miou=float(miou(cand_total)),
                       reference_pixel_accuracy=pixel_accuracy(ref_total), pixel_accuracy=pixel_accuracy(cand_total),
                       reference_per_class_iou=_listed(iou_per_class(ref_total)),
                       per_class_iou=_listed(iou_per_class(cand_total)))
            fig["miou_drop"] = fig["reference_miou"] - fig["miou"]
            bounds["miou_drop"] = _bca(lambda t: miou(t[:, : c * c].reshape(-1, c, c)) - miou(t[:, c * c:].reshape(-1, c, c)),
                                       np.concatenate([ref_conf, cand_conf], 1), weights)
        fig["counts"], fig["bounds"], fig["confidence"] = counts, bounds, CONFIDENCE
        fig["bootstrap"] = {"reps": reps, "seed": seed, "over": "pictures"}
        return fig


def compare_masks(reference: torch.Tensor, candidate: torch.Tensor, masks: torch.Tensor | None = None) -> dict:
    """Every figure of `candidate` against `reference` (N x C x H x W logits) in one call."""
    comparison = MaskComparison(reference.shape[1])
    comparison.add(reference, candidate, masks)
    return comparison.figures()


compare = compare_masks


def confusion_matrix(truth: torch.Tensor, predicted: torch.Tensor, c: int) -> np.ndarray:
    """C x C pixel counts, [truth, predicted], of 1-D int64 class tensors (ignored pixels left out)."""
    if truth.numel() and int(truth.max()) >= c:
        raise ValueError(f"a mask holds class {int(truth.max())}, but the model has {c} classes")
    return torch.bincount(truth * c + predicted, minlength=c * c).reshape(c, c).numpy()


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU of each class from [..., truth, predicted] confusion matrices; NaN for a class absent
    from the truth (it takes no part in the mean, for either model: the drop is paired)."""
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    union = confusion.sum(-2) + confusion.sum(-1) - tp
    present = confusion.sum(-1) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(present, tp / np.where(union > 0, union, 1), np.nan)


def miou(confusion: np.ndarray) -> np.ndarray:
    """Mean IoU over the classes present in the truth (of each matrix in a stack)."""
    return np.nanmean(iou_per_class(confusion), axis=-1)


def miou_interval(per_picture: np.ndarray, *, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> list[float]:
    """One-sided 95 % (lower, upper) BCa bounds of the mIoU of N per-picture C x C confusion matrices:
    pictures are resampled (their pixels are not independent), seeded so they do not depend on the run."""
    n, c = per_picture.shape[0], per_picture.shape[-1]
    rows = per_picture.reshape(n, c * c).astype(np.float64)
    weights = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=reps).astype(np.float64)
    return _bca(lambda t: miou(t.reshape(-1, c, c)), rows, weights)


def pixel_accuracy(confusion: np.ndarray) -> float:
    return float(np.trace(confusion) / max(confusion.sum(), 1))


def _listed(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values]


def _bca(statistic, rows: np.ndarray, weights: np.ndarray) -> list[float]:
    """One-sided (lower, upper) bounds of `statistic` (of summed per-picture rows) by the bias-
    corrected and accelerated bootstrap: the plain percentile bootstrap misses ~11 % instead of 5 %
    on 60 pictures with a skewed share of bad pixels (tests/test_segmentation_figures.py). Hand-written
    because scipy.stats.bootstrap's BCa jackknife builds n x (n - 1) resamples; for sums the
    leave-one-out values are the total minus one row, O(n)."""
    total = rows.sum(0)
    value = float(statistic(total[None])[0])
    boot = statistic(weights @ rows)
    if np.ptp(boot) == 0:
        return [value, value]
    reps = len(boot)
    share = np.clip(np.mean(boot < value) + 0.5 * np.mean(boot == value), 0.5 / reps, 1 - 0.5 / reps)
    z0 = NormalDist().inv_cdf(float(share))
    jack = statistic(total[None] - rows)
    d = jack.mean() - jack
    accel = float((d**3).sum() / (6 * max((d**2).sum(), 1e-300) ** 1.5))
    out = []
    for q in (1 - CONFIDENCE, CONFIDENCE):
        z = NormalDist().inv_cdf(q)
        out.append(float(np.quantile(boot, NormalDist().cdf(z0 + (z0 + z) / (1 - accel * (z0 + z))))))
    return out


_TEXT_KEYS = ("images", "pixels", "miou", "reference_miou", "miou_drop", "pixel_agreement", "min_picture_agreement",
              "snr_db", "max_abs_dlogit")


def text(figures: dict) -> str:
    """Indented `name value` lines, for a gate-failure message."""
    return "\n".join(f"  {k:<22} {format_value(k, figures[k])}" for k in _TEXT_KEYS if k in figures)


def streamed(reference, candidate, images: torch.Tensor, masks: torch.Tensor | None, *, num_classes: int,
             batch: int = 16, progress: bool = False, desc: str = "comparing",
             first_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> dict:
    """The figures of `candidate(x)` against `reference(x)` (callables on normalised pictures),
    computed `batch` pictures at a time: memory holds one batch of logits, whatever the picture count.
    `first_batch(reference_logits, candidate_logits)` sees the first batch's outputs (the card's
    examples) without running either model again."""
    from tqdm.auto import tqdm

    comparison = MaskComparison(num_classes)
    for s in tqdm(range(0, len(images), batch), desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        x = images[s : s + batch]
        ref, cand = reference(x), candidate(x)
        if s == 0 and first_batch is not None:
            first_batch(ref, cand)
        comparison.add(ref, cand, None if masks is None else masks[s : s + batch])
    return comparison.figures()


def write_examples(reference: torch.Tensor, candidate: torch.Tensor, images: torch.Tensor, masks: torch.Tensor | None,
                   path: Path) -> None:
    """The label maps of a few pictures (`images` uint8 N x 3 x H x W) from the reference's and the
    candidate's logits (N x C x H x W), with the true masks when known, as a compressed .npz that
    `plot_examples` draws."""
    arrays = {"images": images.permute(0, 2, 3, 1).numpy(),
              "reference": reference.argmax(1).to(torch.uint8).numpy(),
              "candidate": candidate.argmax(1).to(torch.uint8).numpy()}
    if masks is not None:
        arrays["truth"] = masks.to(torch.uint8).numpy()
    np.savez_compressed(path, **arrays)


def plot_examples(examples: dict[str, Path], labels: list[str], path: Path, *, title: str = "") -> None:
    """One PNG from the verify stages' `write_examples` files ({variant: .npz}, same pictures): each
    picture, its true mask, eager fp32's and every variant's."""
    from mbv3_mobile.tasks.segmentation.overlay import plot_mask_columns

    loaded = {}
    for v, f in examples.items():
        with np.load(f) as data:
            loaded[v] = dict(data)
    first = next(iter(loaded.values()))
    columns = ([("true mask", first["truth"])] if "truth" in first else []) + [("eager fp32", first["reference"])]
    columns += [(v, data["candidate"]) for v, data in loaded.items()]
    plot_mask_columns(first["images"], columns, labels, path, title=title)


def table(rows: dict[str, dict], *, label: str = "variant",
          lead: tuple[str, Callable[[dict], object]] = ("pictures", lambda f: f["images"]), verdict: bool = False) -> str:
    """Markdown, one row per entry: `label`, the `lead` column, then mIoU, its drop and the pixel
    agreement with their bounds, the worst picture's agreement, SNR, max |dlogit| (and the verdict)."""
    return markdown_table(
        rows, ["mIoU", "mIoU drop [bounds]", "pixel agreement [bounds]", "worst picture", "SNR", "max abs dlogit"],
        lambda f: [format_value("miou", f.get("miou")), with_bounds(f, "miou_drop"), with_bounds(f, "pixel_agreement"),
                   format_value("min_picture_agreement", f["min_picture_agreement"]), with_bounds(f, "snr_db"),
                   f"{f['max_abs_dlogit']:.2e}"],
        label=label, lead=lead, verdict=verdict)


def parity_table(rows: dict[str, dict]) -> str:
    return table(rows, label="format", lead=("gate table", lambda f: f["precision"]), verdict=True)


def summary_line(figures: dict) -> str:
    miou_text = f"mIoU {format_value('miou', figures['miou'])}  " if "miou" in figures else ""
    return (f"{miou_text}pixel agreement {format_value('pixel_agreement', figures['pixel_agreement'])}"
            f"  max|dlogit| {figures['max_abs_dlogit']:.2e}")


def parity_plot(rows: dict[str, dict], path: Path) -> None:
    """max |dlogit| (log) and pixel disagreement (log, with its upper bound) per entry, and the mIoU
    drop with bounds when masks were given; red: failed, orange: inconclusive."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {k: v for k, v in rows.items() if "skipped" not in v}
    names = list(rows)
    colors = [{"fail": "tab:red", "inconclusive": "tab:orange"}.get(rows[n]["gate"], "tab:blue") for n in names]
    labelled = bool(names) and all("miou_drop" in rows[n] for n in names)
    fig, axes = plt.subplots(1, 3 if labelled else 2, figsize=(15 if labelled else 11, 0.45 * len(names) + 1.8))
    axes[0].barh(names, [max(rows[n]["max_abs_dlogit"], 1e-9) for n in names], color=colors)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("max |Δlogit| vs eager fp32 (log)")
    off = [max(1 - rows[n]["pixel_agreement"], 1e-7) for n in names]
    worst = [max(1 - rows[n]["bounds"]["pixel_agreement"][0], 1e-7) for n in names]
    axes[1].barh(names, [100 * v for v in off], color=colors,
                 xerr=[[0] * len(names), [100 * (w - o) for w, o in zip(worst, off)]], capsize=3)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("pixels whose class differs from eager (%, log; bar: upper bound)")
    if labelled:
        drops = [100 * rows[n]["miou_drop"] for n in names]
        err = [[100 * (rows[n]["miou_drop"] - rows[n]["bounds"]["miou_drop"][0]) for n in names],
               [100 * (rows[n]["bounds"]["miou_drop"][1] - rows[n]["miou_drop"]) for n in names]]
        axes[2].barh(names, drops, color=colors, xerr=err, capsize=3)
        axes[2].axvline(0, color="k", lw=1)
        axes[2].set_xlabel("mIoU drop vs eager fp32 (pt), 95 % one-sided bounds")
    for ax in axes:
        ax.invert_yaxis()
    for ax in axes[1:]:
        ax.set_yticklabels([])
    fig.suptitle("segmentation parity with eager PyTorch fp32 on the same real pictures (red: failed, orange: inconclusive)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reference_figures(rows: dict[str, dict]) -> dict:
    """What a parity report says of the reference itself: its mIoU and pixel accuracy with masks."""
    first = next((r for r in rows.values() if "reference_miou" in r), {})
    return {"reference_miou": first.get("reference_miou"), "reference_pixel_accuracy": first.get("reference_pixel_accuracy")}


def reference_text(rows: dict[str, dict]) -> str:
    value = reference_figures(rows)["reference_miou"]
    return f" (mIoU {100 * value:.2f} %)" if value is not None else ""
