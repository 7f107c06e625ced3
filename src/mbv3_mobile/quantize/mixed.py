"""Accuracy-aware mixed precision for PT2E int8: which layers to keep in fp32, chosen by measurement.

One calibration serves every candidate: the prepared (observed) graph is calibrated once; leaving a
layer in fp32 means removing the observers that would quantize its weights and the activation
feeding it (`plan`: which makes that activation's producers fp32 as well) before `convert_pt2e`, so
those layers run on float values between dequantize and quantize nodes. XNNPACK runs such mixed
graphs inside one delegate.

`sensitivity` ranks layers by how much leaving each alone in fp32 regains (logits SNR against eager
fp32); `choose_fp32_layers` adds layers in that order until a judge says the int8 model passes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from mbv3_mobile.graph import graph_module_outputs, is_conv_or_linear, module_path
from mbv3_mobile.verify.compare import snr_db


def _observers(prepared: torch.fx.GraphModule) -> list[torch.fx.Node]:
    from torchao.quantization.pt2e import ObserverBase

    mods = dict(prepared.named_modules())
    return [n for n in prepared.graph.nodes if n.op == "call_module" and isinstance(mods.get(n.target), ObserverBase)]


def layers(prepared: torch.fx.GraphModule) -> list[str]:
    """Quantized compute layers (convolutions and linears), in graph order."""
    out = []
    for node in prepared.graph.nodes:
        if is_conv_or_linear(node):
            path = module_path(node)
            if path and path not in out:
                out.append(path)
    return out


def _producers(node: torch.fx.Node, observers: set) -> list[torch.fx.Node]:
    """Compute nodes whose value reaches `node` without passing an observer (through ReLUs, adds...)."""
    found, todo, seen = [], [node], set()
    while todo:
        n = todo.pop()
        if n in seen or not isinstance(n, torch.fx.Node) or n in observers:
            continue
        seen.add(n)
        if is_conv_or_linear(n):
            found.append(n)
        elif n.op == "call_function":
            todo += [a for a in n.args if isinstance(a, torch.fx.Node)]
    return found


def _consumers(node: torch.fx.Node, observers: set) -> list[torch.fx.Node]:
    """Compute nodes that read `node`'s value without an observer between."""
    found, todo, seen = [], list(node.users), set()
    while todo:
        n = todo.pop()
        if n in seen or n in observers:
            continue
        seen.add(n)
        if is_conv_or_linear(n):
            found.append(n)
        elif n.op == "call_function":
            todo += list(n.users)
    return found


def plan(prepared: torch.fx.GraphModule, units) -> tuple[list[torch.fx.Node], list[str]]:
    """(observers to remove, every layer that ends up in fp32) for keeping `units` in fp32.

    A unit is a layer whose weights and *input* stay float: its input edge's observer goes, so the
    layers producing that edge (and any other conv reading it) run in fp32 too. XNNPACK runs a float
    conv between a dequantize and a quantize, but not an int8 conv with a float input or output, so
    the edge decides the set. The unit's output stays quantized for its consumers."""
    observers = set(_observers(prepared))
    remove: list[torch.fx.Node] = []
    fp32: list[torch.fx.Node] = []
    for node in prepared.graph.nodes:
        if not is_conv_or_linear(node) or module_path(node) not in units:
            continue
        fp32.append(node)
        edge = node.args[0]
        if edge in observers:
            remove.append(edge)
            fp32 += _producers(edge.args[0], observers) + _consumers(edge, observers)
    for node in fp32:
        weight = node.args[1] if len(node.args) > 1 else None
        if weight in observers:
            remove.append(weight)
    names = list(dict.fromkeys(p for p in (module_path(n) for n in fp32) if p))
    return list(dict.fromkeys(remove)), names


def convert_with_fp32(prepared: torch.fx.GraphModule, fp32_layers: list[str] | tuple[str, ...] = ()) -> torch.fx.GraphModule:
    """`convert_pt2e` of a calibrated copy of `prepared`, with `fp32_layers` left in float."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    graph = copy.deepcopy(prepared)
    for obs in plan(graph, set(fp32_layers))[0]:
        obs.replace_all_uses_with(obs.args[0])
        graph.graph.erase_node(obs)
    graph.graph.lint()
    graph.recompile()
    return convert_pt2e(graph)


@torch.no_grad()
def logits(graph, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([graph(images[i : i + batch]) for i in range(0, len(images), batch)])


@dataclass
class Sensitivity:
    layer: str
    snr_db: float  # logits SNR with only this layer in fp32
    gain_db: float  # over the all-int8 model


def sensitivity(prepared: torch.fx.GraphModule, reference: torch.Tensor, images: torch.Tensor,
                candidates: list[str] | None = None, *, progress: Callable[[str], None] | None = None) -> tuple[float, list[Sensitivity]]:
    """(all-int8 logits SNR, per-layer results sorted by gain): each layer alone left in fp32."""
    base = snr_db(reference, logits(convert_with_fp32(prepared), images))
    out = []
    names = candidates or layers(prepared)
    for i, layer in enumerate(names):
        value = snr_db(reference, logits(convert_with_fp32(prepared, [layer]), images))
        out.append(Sensitivity(layer, value, value - base))
        if progress and (i + 1) % 10 == 0:
            progress(f"sensitivity: {i + 1}/{len(names)} layers")
    return base, sorted(out, key=lambda s: -s.gain_db)


@dataclass
class Fallback:
    fp32_layers: list[str]
    passed: bool
    history: list[dict] = field(default_factory=list)  # one entry per tried configuration


def choose_fp32_layers(prepared: torch.fx.GraphModule, ranking: list[Sensitivity], judge: Callable[[torch.fx.GraphModule], dict],
                       *, max_layers: int = 5) -> Fallback:
    """Add units in ranking order until `judge(converted)["verdict"] == "pass"`, skipping any that
    would put more than `max_layers` layers in fp32 (a unit brings its input's producers, `plan`).
    `Fallback.fp32_layers` is every layer in fp32; the history says which units were tried."""
    units: list[str] = []
    history = []
    verdict = judge(convert_with_fp32(prepared))
    history.append({"units": [], "fp32_layers": [], **verdict})
    for s in ranking:
        if verdict["verdict"] == "pass":
            break
        if len(plan(prepared, set(units + [s.layer]))[1]) > max_layers:
            continue
        units.append(s.layer)
        verdict = judge(convert_with_fp32(prepared, units))
        history.append({"units": list(units), "fp32_layers": plan(prepared, set(units))[1], **verdict})
    return Fallback(history[-1]["fp32_layers"], verdict["verdict"] == "pass", history)


RANKING_PICTURES = 128  # the exact per-layer ranking runs one int8 graph per candidate: a subset suffices


def shortlist(prepared: torch.fx.GraphModule, float_model: nn.Module, images: torch.Tensor, k: int) -> list[str]:
    """The `k` quantized layers where the most SNR is lost (SNR of the previous layer's output minus
    this layer's, int8 graph vs eager, one pass): candidates for the exact ranking, which needs one
    converted graph per layer. A layer followed by a BatchNorm reports the BN's output (folded)."""
    from mbv3_mobile.verify.drift import eager_module_tensors, folded_batchnorm

    names = layers(prepared)
    if len(names) <= k:
        return names
    eager = eager_module_tensors(float_model.eval(), images)
    quant = folded_batchnorm(float_model, graph_module_outputs(convert_with_fp32(prepared), images))
    lost, previous = {}, None
    for name in names:
        parent, _, index = name.rpartition(".")
        bn = f"{parent}.{int(index) + 1}" if index.isdigit() else ""
        key = bn if bn in quant else name  # a folded conv's value sits at its BN's path
        ref, got = eager.get(key), quant.get(key)
        if ref is None or got is None or ref.shape != got.shape:
            continue
        value = snr_db(ref, got)
        lost[name] = (previous - value) if previous is not None and math.isfinite(previous) else 0.0
        previous = value
    return sorted(lost, key=lambda n: -lost[n])[:k]


def meets(figures: dict, rules) -> bool:
    """Every rule (verify.gates.GateRule) holds for the measured value itself: the fallback's judge
    on held-out pictures (the verify stage judges the published model on its bounds afterwards)."""
    return all(figures[r.figure] <= r.limit if r.op == "<=" else figures[r.figure] >= r.limit for r in rules)


def fallback(prepared: torch.fx.GraphModule, float_model: nn.Module, held_out: torch.Tensor,
             labels: torch.Tensor | None, rules, mode: str, *, max_layers: int = 5,
             log: Callable[[str], None] = print, compare: Callable | None = None) -> tuple[torch.fx.GraphModule, dict]:
    """The converted int8 graph and what was decided. `mode`: "off" (all int8), "auto" (all int8
    unless it misses `rules` on `held_out`; then the fewest, most sensitive layers in fp32 that meet
    them, at most `max_layers`), or comma-separated layer paths to keep in fp32 as asked. `compare`
    (reference, candidate, labels) -> figures judges a candidate (default: the logits comparator)."""
    from mbv3_mobile.verify.compare import compare_logits

    compare = compare or compare_logits
    if mode == "off":
        return convert_with_fp32(prepared), {"mode": "off", "fp32_layers": []}
    known = layers(prepared)
    with torch.no_grad():
        reference = logits(float_model.eval(), held_out)

    def judge(graph) -> dict:
        f = compare(reference, logits(graph, held_out), labels)
        keep = ("top1_agreement", "snr_db", "top1_drop", "min_cosine")
        return {"verdict": "pass" if meets(f, rules) else "fail", **{k: f[k] for k in keep if k in f}}

    info: dict = {"mode": mode, "held_out_pictures": len(held_out), "rules": [r.describe() for r in rules],
                  "candidates": len(known)}
    if mode != "auto":
        asked = [name.strip() for name in mode.split(",") if name.strip()]
        unknown = [name for name in asked if name not in known]
        if unknown:
            raise ValueError(f"--int8-fallback: {', '.join(unknown)} is not a quantized layer; choose from "
                             f"{', '.join(known[:6])}, ... ({len(known)} layers) or use 'auto' / 'off'")
        graph = convert_with_fp32(prepared, asked)
        return graph, {**info, "units": asked, "fp32_layers": plan(prepared, set(asked))[1], "all_int8": judge(convert_with_fp32(prepared)), "chosen": judge(graph)}
    base = judge(convert_with_fp32(prepared))
    info["all_int8"] = base
    if base["verdict"] == "pass":
        log(f"int8 fallback: the int8 model meets {', '.join(info['rules'])} on {len(held_out)} held-out pictures; no fallback layers")
        return convert_with_fp32(prepared), {**info, "fp32_layers": [], "chosen": base}
    ranked = held_out[:RANKING_PICTURES]
    short = shortlist(prepared, float_model, ranked, 3 * max_layers)
    log(f"int8 fallback: the int8 model misses the gate on held-out pictures ({_figures(base)}); ranking the {len(short)} "
        f"of {len(known)} layers where most error enters")
    _, ranking = sensitivity(prepared, reference[: len(ranked)], ranked, short, progress=log)
    result = choose_fp32_layers(prepared, ranking, judge, max_layers=max_layers)
    units = result.history[-1]["units"]
    info.update(units=units, fp32_layers=result.fp32_layers, passed=result.passed, chosen=result.history[-1], history=result.history,
                ranking=[{"layer": r.layer, "gain_db": round(r.gain_db, 2)} for r in ranking[:10]])
    log(f"int8 fallback: {len(result.fp32_layers)} layer(s) in fp32 ({', '.join(result.fp32_layers)}): "
        f"{_figures(result.history[-1])} -> {'meets the gate' if result.passed else f'still misses it after {max_layers}'}")
    return convert_with_fp32(prepared, units), info


def _figures(f: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in f.items() if isinstance(v, float))


def with_outlier_channel(model: nn.Module, images: torch.Tensor, block: str = "features.2.block",
                         factor: float = 40.0) -> nn.Module:
    """A copy of `model` that computes the same function in fp32 but has one activation channel
    `factor` x wider than the others (a per-tensor int8 range then wastes its resolution on it):
    the expand conv's BN scales channel `channel` by `factor` and the depthwise conv after the ReLU
    divides it back. The channel is the most active one on `images` (a dead channel would change
    nothing). For showing what mixed precision recovers; needs a ReLU block."""
    out = copy.deepcopy(model).eval()
    mods = dict(out.named_modules())
    bn, act, dw = mods[f"{block}.0.1"], mods[f"{block}.0.2"], mods[f"{block}.1.0"]
    if not isinstance(act, nn.ReLU):
        raise ValueError(f"{block}: the expand activation must be a ReLU (positively homogeneous), got {type(act).__name__}")
    seen = {}
    hook = act.register_forward_hook(lambda _m, _i, o: seen.setdefault("a", o))
    with torch.no_grad():
        out(images)
    hook.remove()
    channel = int(seen["a"].mean(dim=(0, 2, 3)).argmax())
    with torch.no_grad():
        bn.weight[channel] *= factor
        bn.bias[channel] *= factor
        dw.weight[channel] /= factor
    return out
