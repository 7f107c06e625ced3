"""Drift localisation: the first nn.Module (in execution order) whose output in a format departs
from eager PyTorch on the same image.

Format-neutral: each format supplies `{module path: output array}` from what its runtime exposes
(ONNX node outputs tagged with the exporter's name scopes, the MIL interpreter's per-op outputs,
ExecuTorch's debug outputs); this module supplies the eager side from forward hooks and the
comparison. Children finish before their parents, so the first divergent module in completion
order is the deepest one where the error appears.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch


def eager_module_tensors(model: torch.nn.Module, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
    """Output of every named module (tensor outputs only), in the order the modules finished."""
    outputs: OrderedDict[str, torch.Tensor] = OrderedDict()
    hooks = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_m, _inp, out, name=name):
            if isinstance(out, torch.Tensor):
                outputs[name] = out.detach()

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(images)
    finally:
        for h in hooks:
            h.remove()
    return outputs


def eager_module_outputs(model: torch.nn.Module, image: torch.Tensor) -> OrderedDict[str, np.ndarray]:
    """`eager_module_tensors` as float32 numpy arrays (what the formats' runtimes report)."""
    return OrderedDict((n, t.float().numpy().copy()) for n, t in eager_module_tensors(model, image).items())


@dataclass
class DriftReport:
    module: str | None  # first divergent module path, None when every compared module agrees
    relative_error: float
    threshold: float
    compared: list[tuple[str, float]]  # (module path, relative error) in execution order

    def table(self, limit: int = 12) -> str:
        rows = self.compared
        if self.module is not None:
            i = [p for p, _ in rows].index(self.module)
            rows = rows[max(0, i - limit // 2) : i + limit // 2]
        else:
            rows = rows[-limit:]
        lines = [f"  {'module':<28} rel. error"]
        lines += [f"{'>' if p == self.module else ' '} {p:<28} {e:.3e}" for p, e in rows]
        return "\n".join(lines)

    def summary(self) -> str:
        if self.module is None:
            return f"no module departs from eager beyond {self.threshold:g} (relative max error)"
        return f"first departure from eager at `{self.module}` (relative max error {self.relative_error:.3e} > {self.threshold:g})"


def relative_error(ref: np.ndarray, got: np.ndarray) -> float:
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64).reshape(ref.shape)
    return float(np.abs(got64 - ref64).max() / (np.abs(ref64).max() + 1e-12))


def first_divergence(eager: OrderedDict[str, np.ndarray], candidate: dict[str, np.ndarray], threshold: float) -> DriftReport:
    compared = []
    for path, ref in eager.items():
        got = candidate.get(path)
        if got is None or got.size != ref.size:
            continue
        compared.append((path, relative_error(ref, got)))
    if not compared:
        raise ValueError("no module outputs could be matched between eager and the format")
    for path, err in compared:
        if err > threshold:
            return DriftReport(path, err, threshold, compared)
    return DriftReport(None, max(e for _, e in compared), threshold, compared)


def folded_batchnorm(model: torch.nn.Module, candidate: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Where a format folded a BatchNorm into the conv before it (PT2E convert, XNNPACK, onnxsim),
    the value it reports for the conv is the BN's output and the BN reports nothing: move that
    value to the BN's path, so the conv is not compared with eager's pre-BN output."""
    out = dict(candidate)
    modules = dict(model.named_modules())
    for path, module in modules.items():
        parent, _, index = path.rpartition(".")
        if not isinstance(module, torch.nn.modules.batchnorm._BatchNorm) or not index.isdigit() or index == "0":
            continue
        conv = f"{parent}.{int(index) - 1}" if parent else str(int(index) - 1)
        if isinstance(modules.get(conv), torch.nn.Conv2d) and path not in out and conv in out:
            out[path] = out.pop(conv)
    return out


def localize(model: torch.nn.Module, image: torch.Tensor, candidate: dict[str, np.ndarray], threshold: float) -> DriftReport:
    """Compare one image's per-module outputs; `threshold` is a relative max error (fp32 ~1e-4)."""
    return first_divergence(eager_module_outputs(model, image[:1]), folded_batchnorm(model, candidate), threshold)
