"""Study: where should an LR-ASPP's last upsample and argmax run? (docs/segmentation.md)

    python scripts/segmentation_argmax_study.py [--resolution 512] [--rounds 7]

Compares, on the embedded segmentation default:
  A. the exported graph (logits upsampled to the input inside the graph; argmax in app code), and
  B. the graph without the last upsample (logits at 1/8 of the input), with the argmax taken at 1/8
     and the labels upsampled by nearest neighbour in app code.
Accuracy: pixel agreement of B's label map with A's, eager, on 200 composite test pictures at the
model's own resolution. Latency: each fp32 .pte at --resolution, 1 thread, interleaved rounds, plus the
app-side argmax of each output (torch, as a stand-in for app code). Prints a markdown table."""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


class Eighth(torch.nn.Module):
    """LR-ASPP without its last upsample: logits at 1/8 of the input."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.classifier(*self.model.features(x))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from mbv3_mobile.core.paths import cache_root
    from mbv3_mobile.data.segmentation import composite_folder, load_segmentation_folder
    from mbv3_mobile.export.executorch.lower import lower, write_pte
    from mbv3_mobile.export.executorch.runtime import _load_method
    from mbv3_mobile.graph import export_program
    from mbv3_mobile.tasks.segmentation.checkpoint import load_segmentation_checkpoint
    from mbv3_mobile.train.shipped import resolve

    ck = load_segmentation_checkpoint(resolve("embedded:segmentation"))
    model, pre = ck.model.eval(), ck.preprocessing
    data = load_segmentation_folder(composite_folder(cache_root(), split="test", count=200, resolution=pre.resolution),
                                    pre)
    with torch.no_grad():
        agree = total = 0
        for s in range(0, len(data), 20):
            x = pre.normalize(data.images[s : s + 20].float() / 255)
            full = model(x).argmax(1)
            small = Eighth(model)(x).argmax(1, keepdim=True).float()
            near = F.interpolate(small, size=x.shape[-2:], mode="nearest")[:, 0].long()
            agree += int((near == full).sum())
            total += full.numel()
    print(f"pixel agreement of 1/8 argmax + nearest upsample with the full label map: {100 * agree / total:.2f} % "
          f"({len(data)} composite test pictures at {pre.resolution} px)")
    r = args.resolution
    x = torch.randn(1, 3, r, r)
    methods = {}
    for name, net in (("A: logits at the input size", model), ("B: logits at 1/8", Eighth(model))):
        lowered = lower(export_program(net, x))
        path = f"/tmp/argmax_study_{r}_{name[0]}.pte"
        write_pte(lowered, path)
        methods[name] = _load_method(open(path, "rb").read())
        print(f"{name}: {lowered.delegation.summary()}", flush=True)
    times = {n: [] for n in methods}
    argmax = {n: [] for n in methods}
    for _ in range(args.rounds):
        for name, method in methods.items():
            for _ in range(5):
                t0 = time.perf_counter()
                out = method.execute([x])[0]
                t1 = time.perf_counter()
                labels = out.argmax(1)
                if out.shape[-1] != r:
                    labels = F.interpolate(labels[:, None].float(), size=(r, r), mode="nearest")[:, 0]
                t2 = time.perf_counter()
                times[name].append(1000 * (t1 - t0))
                argmax[name].append(1000 * (t2 - t1))
    print(f"\n| {r}x{r}, 1 thread, {args.rounds} x 5 runs | .pte (median ms) | app argmax (+ nearest upsample) | total |")
    print("|---|---|---|---|")
    for name in methods:
        a, b = statistics.median(times[name]), statistics.median(argmax[name])
        print(f"| {name} | {a:.1f} | {b:.1f} | {a + b:.1f} |")


if __name__ == "__main__":
    main()
