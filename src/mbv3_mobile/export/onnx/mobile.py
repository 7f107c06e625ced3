"""ONNX Runtime Mobile: an equivalent graph every mobile EP can take, EP coverage from ORT's own
usability checker, and the ORT format (`.ort` + the operator config of a reduced build).

Why the rewrite: ORT inlines HardSwish into HardSigmoid + Mul, and neither NNAPI nor the Core ML
EP's NeuralNetwork format lists HardSigmoid; NeuralNetwork lists no ReduceMean either. Each such
node splits the graph into CPU and EP partitions (a copy each way per split). The replacements are
exact rewrites (same formula torch uses), keeping every original output name, so drift
localisation's module scopes still apply.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from mbv3_mobile.core.atomic import atomic_path

# EP name (as recorded) -> the supported-ops table ORT ships for it (tools/mobile_helpers)
EPS = {"nnapi": "nnapi_supported_ops.md", "coreml_nn": "coreml_supported_neuralnetwork_ops.md",
       "coreml_mlprogram": "coreml_supported_mlprogram_ops.md"}
EP_TITLES = {"nnapi": "NNAPI", "coreml_nn": "Core ML EP (NeuralNetwork)", "coreml_mlprogram": "Core ML EP (MLProgram)"}
ORT_CONFIG = "required_operators.config"


# ---------------------------------------------------------------- the EP-friendly graph


def ep_friendly(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """HardSwish / HardSigmoid -> Add, Clip(0, 6), Div [, Mul]; ReduceMean over H, W (keepdims,
    rank 4) -> GlobalAveragePool. Clip(0, 6) rather than Clip(0, 1) after a scale: NNAPI's Clip
    builder maps only [0, 6] and [-1, 1] (RELU6 / RELU1)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    shapes = _ranks(model)
    consts: dict[float, str] = {}

    def const(value: float) -> str:
        if value not in consts:
            name = f"ep_friendly_const_{len(consts)}"
            graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
            consts[value] = name
        return consts[value]

    counts = {"HardSwish": 0, "HardSigmoid": 0, "ReduceMean": 0}
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        x, y, tag = node.input[0] if node.input else "", node.output[0], node.name or node.output[0]
        if node.op_type in ("HardSwish", "HardSigmoid"):
            alpha, beta = (1 / 6, 0.5) if node.op_type == "HardSwish" else (attrs.get("alpha", 0.2), attrs.get("beta", 0.5))
            # clip(alpha x + beta, 0, 1) == clip(x + beta/alpha, 0, 1/alpha) / (1/alpha): torch's x+3, clamp 0..6, /6
            top = float(np.float32(1.0 / np.float32(alpha)))
            shift = float(np.float32(beta) * np.float32(top))
            hs = node.op_type == "HardSwish"
            sig = f"{tag}_hsig" if hs else y
            nodes += [helper.make_node("Add", [x, const(shift)], [f"{tag}_shift"], name=f"{tag}_add"),
                      helper.make_node("Clip", [f"{tag}_shift", const(0.0), const(top)], [f"{tag}_clip"], name=f"{tag}_clip"),
                      helper.make_node("Div", [f"{tag}_clip", const(top)], [sig], name=f"{tag}_div")]
            if hs:
                nodes.append(helper.make_node("Mul", [x, sig], [y], name=f"{tag}_mul"))
            counts[node.op_type] += 1
            continue
        if node.op_type == "ReduceMean" and _spatial_mean(node, attrs, inits, shapes):
            nodes.append(helper.make_node("GlobalAveragePool", [x], [y], name=f"{tag}_gap"))
            counts["ReduceMean"] += 1
            continue
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)
    onnx.checker.check_model(model, full_check=True)
    with atomic_path(dst) as tmp:
        onnx.save_model(model, str(tmp))
    return {"rewritten": counts, "op_types": sorted({n.op_type for n in graph.node}), "nodes": len(graph.node)}


def _ranks(model) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    return {v.name: len(v.type.tensor_type.shape.dim) for v in values if v.type.tensor_type.HasField("shape")}


def _spatial_mean(node, attrs: dict, inits: dict, ranks: dict) -> bool:
    """A ReduceMean that is exactly GlobalAveragePool: rank-4 input, axes {2, 3}, keepdims."""
    from onnx import numpy_helper

    if ranks.get(node.input[0]) != 4 or not attrs.get("keepdims", 1):
        return False
    if "axes" in attrs:
        axes = list(attrs["axes"])
    elif len(node.input) > 1 and node.input[1] in inits:
        axes = numpy_helper.to_array(inits[node.input[1]]).tolist()
    else:
        return False
    return sorted(a % 4 for a in axes) == [2, 3]


# ---------------------------------------------------------------- EP coverage (ORT's checker)


def ep_coverage(path: str | os.PathLike) -> dict:
    """What NNAPI and the Core ML EP (NeuralNetwork, MLProgram) can take of this model, from ORT's
    mobile usability checker (`onnxruntime.tools.mobile_helpers.usability_checker`), on the graph
    ORT hands the EPs (after its basic optimisations, as the checker does). By op type and shape:
    the checker does not verify op-specific caveats, which it lists."""
    import logging

    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    quiet = logging.getLogger("mbv3_mobile.ort_usability")
    quiet.setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        optimize_model(Path(path), optimized, use_external_initializers=True)
        model = ModelProtoWithShapeInfo(optimized).model_with_shape_info
    _mark_absent_inputs_fixed(model)
    dynamic_inputs, _ = uc.check_shapes(model.graph, quiet)
    out = {}
    for ep, table in EPS.items():
        info = uc.check_nnapi_partitions(model, True) if ep == "nnapi" else uc.check_coreml_partitions(model, True, table)
        taken = {id(n) for group in info.supported_groups for n in group}
        left: dict[str, int] = {}
        for node in model.graph.node:
            if id(node) not in taken:
                left[node.op_type] = left.get(node.op_type, 0) + 1
        out[ep] = {"nodes": info.num_nodes, "supported_nodes": info.num_supported_nodes,
                   "node_coverage": info.num_supported_nodes / max(info.num_nodes, 1),
                   "partitions": info.num_partitions, "partition_sizes": [len(g) for g in info.supported_groups],
                   "unsupported_ops": sorted(info.unsupported_ops),
                   "unsupported_by_dynamic_shape": info.nodes_unsupported_due_to_dynamic_input,
                   "nodes_left_on_cpu": dict(sorted(left.items())), "suitability": info.suitability().name,
                   "caveats": info.supported_ops_checker.get_caveats()}
    counts = _counts(f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in model.graph.node)
    return {"eps": out, "dynamic_inputs": [i.name for i in dynamic_inputs], "checked_op_counts": counts}


def _mark_absent_inputs_fixed(model) -> None:
    """The checker (ORT 1.32) counts an omitted optional input ("", e.g. Resize's roi and scales when
    it is given sizes) as a tensor of unknown shape, and leaves that node on the CPU "for a dynamic
    input shape"; ORT's own partitioner skips absent inputs. A value_info entry named "" with a fixed
    shape makes the checker do the same. Only the checker's copy of the graph is changed."""
    import onnx

    if any(name == "" for node in model.graph.node for name in node.input):
        model.graph.value_info.append(onnx.helper.make_tensor_value_info("", onnx.TensorProto.FLOAT, [1]))


def _counts(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return dict(sorted(out.items()))


def coverage_figures(coverage: dict) -> dict:
    """Gate figures: per EP, and `coreml_ep_*` as the worse of the two Core ML formats."""
    eps = coverage["eps"]
    figures = {}
    for ep, c in eps.items():
        figures[f"{ep}_node_coverage"] = c["node_coverage"]
        figures[f"{ep}_partitions"] = c["partitions"]
    figures["coreml_ep_node_coverage"] = min(eps[e]["node_coverage"] for e in ("coreml_nn", "coreml_mlprogram"))
    figures["coreml_ep_partitions"] = max(eps[e]["partitions"] for e in ("coreml_nn", "coreml_mlprogram"))
    return figures


def coverage_text(coverage: dict) -> str:
    """One line per EP: how much it takes and, where it loses nodes, which op types stay on the CPU."""
    lines = []
    for ep, c in coverage["eps"].items():
        line = (f"{EP_TITLES[ep]}: {c['supported_nodes']}/{c['nodes']} nodes in {c['partitions']} partition(s)")
        if c["nodes_left_on_cpu"]:
            left = ", ".join(f"{n} {op}" for op, n in c["nodes_left_on_cpu"].items())
            why = f"; ops it lacks: {', '.join(c['unsupported_ops'])}" if c["unsupported_ops"] else ""
            dyn = (f"; {c['unsupported_by_dynamic_shape']} node(s) for a dynamic input shape"
                   if c["unsupported_by_dynamic_shape"] else "")
            line += f"; left on the CPU: {left}{why}{dyn}"
        lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------- ORT format


def to_ort(src: str | os.PathLike, dst: str | os.PathLike, config: str | os.PathLike, *, style: str = "runtime") -> dict:
    """ORT's converter (`convert_onnx_models_to_ort`, its Python API) on one model: the `.ort` and
    the `required_operators.config` a reduced-operator build takes (`--include_ops_by_config`).
    "runtime" keeps the graph the EPs are offered (ORT's basic optimisations: what `ep_coverage`
    checked) and saves the CPU fusions to replay on the nodes the CPU EP runs; "fixed" bakes the CPU
    fusions (FusedConv, QLinearConv, ...) in, which NNAPI and the Core ML EP do not take."""
    import contextlib
    import io
    import logging
    import shutil

    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    opt = {"fixed": OptimizationStyle.Fixed, "runtime": OptimizationStyle.Runtime}[style]
    suffix = ".with_runtime_opt" if style == "runtime" else ""
    converter_log = logging.getLogger("ort_format_model.utils")
    level = converter_log.level
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "in" / "model.onnx"
        model.parent.mkdir()
        shutil.copy2(src, model)
        out = Path(tmp) / "out"
        converter_log.setLevel(logging.WARNING)  # its progress lines; the stage logs its own
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                # arm: the phones' platform (no x86-only NCHWc layout, int8 kept S8S8-capable)
                convert_onnx_models_to_ort(model, output_dir=out, optimization_styles=[opt], target_platform="arm")
        finally:
            converter_log.setLevel(level)
        with atomic_path(dst) as tmp_dst:
            shutil.copy2(out / f"model{suffix}.ort", tmp_dst)
        # the converter names the model's temp path in a comment: keep only the operator lines
        ops = [line for line in (out / f"model.required_operators{suffix}.config").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    with atomic_path(config) as tmp_cfg:
        Path(tmp_cfg).write_text("\n".join(ops) + "\n")
    return {"style": style, "target_platform": "arm", "operators": ops, "op_counts": ort_op_counts(dst)}


def ort_op_counts(path: str | os.PathLike) -> dict[str, int]:
    """{domain:op_type: nodes} of an `.ort` file's main graph, read with ORT's own flatbuffers schema."""
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import InferenceSession

    buf = bytearray(Path(path).read_bytes())
    graph = InferenceSession.InferenceSession.GetRootAsInferenceSession(buf, 0).Model().Graph()
    nodes = [graph.Nodes(i) for i in range(graph.NodesLength())]
    return _counts(f"{n.Domain().decode() or 'ai.onnx'}:{n.OpType().decode()}" for n in nodes)


def merged_config(configs: list[Path]) -> str:
    """One operator config for every published `.ort` (a reduced build of the app needs the union):
    lines `domain;opset;op,op,...`."""
    ops: dict[tuple[str, int], set[str]] = {}
    for path in configs:
        for line in Path(path).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                domain, opset, names = line.strip().split(";")
                ops.setdefault((domain, int(opset)), set()).update(names.split(","))
    head = "# ONNX Runtime reduced build: build.sh --minimal_build extended --include_ops_by_config required_operators.config\n"
    return head + "".join(f"{d};{o};{','.join(sorted(n))}\n" for (d, o), n in sorted(ops.items()))


def coverage_what(coverage: dict, label: str) -> str:
    """The coverage stage's description, which the runner puts first in a gate failure: which EP
    leaves which nodes (by op type) on the CPU, and the likely cause."""
    losing = {ep: c for ep, c in coverage["eps"].items() if c["nodes_left_on_cpu"]}
    if not losing:
        return f"EP coverage of {label}"
    parts = [f"{EP_TITLES[ep]} leaves {c['nodes'] - c['supported_nodes']} of {c['nodes']} nodes on the CPU "
             f"({', '.join(f'{n} {op}' for op, n in c['nodes_left_on_cpu'].items())}) in {c['partitions']} partition(s)"
             for ep, c in losing.items()]
    lacking = sorted({op.removeprefix("ai.onnx:") for c in losing.values() for op in c["unsupported_ops"]})
    causes = [f"it brought ops these EPs lack ({', '.join(lacking)})"] if lacking else []
    if coverage["dynamic_inputs"]:
        causes.append(f"a dynamic input shape ({', '.join(coverage['dynamic_inputs'])}; NNAPI and the Core ML EP "
                      "want fixed shapes)")
    return (f"EP coverage of {label}: " + "; ".join(parts) + ". Likely cause: a change in the exported graph: "
            + " and ".join(causes or ["see the op types above"])
            + "; compare the op types with the last export that passed, or export with --ep-friendly")
