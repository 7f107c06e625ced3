"""Running ONNX models in ONNX Runtime (CPU execution provider) on real pictures, and the
per-module outputs drift localisation reads (node outputs tagged with the exporter's scopes)."""

from __future__ import annotations

import os

import numpy as np
import torch

from mbv3_mobile.data.preprocess import check_model_input

ORT_REPLAY = "session.enable_saved_runtime_optimizations"


def ort_session(path: str | os.PathLike, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if str(path).endswith(".ort"):
        # our .ort files keep the CPU fusions as saved runtime optimisations: replay them, as the apps do
        opts.add_session_config_entry(ORT_REPLAY, "1")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(path_or_session, images: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Logits for normalised images (N, 3, R, R); batches when the model's batch dim is dynamic,
    else one picture per run (the mobile export's fixed batch of 1)."""
    sess = ort_session(path_or_session) if isinstance(path_or_session, (str, os.PathLike)) else path_or_session
    inp = sess.get_inputs()[0]
    check_model_input(images, tuple(inp.shape), "this ONNX model")
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    step = fixed or batch_size
    outs = []
    for i in range(0, len(images), step):
        chunk = images[i : i + step].numpy().astype(np.float32)
        n = len(chunk)
        if fixed and n != fixed:  # the last chunk of a fixed batch: pad with copies, drop their outputs
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - n, axis=0)])
        outs.append(sess.run(None, {inp.name: chunk})[0][:n])
    return torch.from_numpy(np.concatenate(outs)).float()


def intermediate_outputs(path: str | os.PathLike, image: torch.Tensor) -> dict[str, np.ndarray]:
    """Every node output for one input, by exposing all value names as graph outputs (ORT has no
    tap API); keys are ONNX value names. Used to localise drift."""
    import onnx

    model = onnx.load(str(path))
    known = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for out in node.output:
            if out and out not in known:
                model.graph.output.append(onnx.ValueInfoProto(name=out))
                known.add(out)
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(names, {sess.get_inputs()[0].name: image.numpy().astype(np.float32)})
    return dict(zip(names, values))


def module_scopes(path: str | os.PathLike) -> dict[str, list[str]]:
    """ONNX value name -> nn.Module scopes, from the dynamo exporter's `pkg.torch.onnx.name_scopes`
    node metadata (present in the raw export; onnxsim drops metadata but keeps value names)."""
    import ast

    import onnx

    scopes: dict[str, list[str]] = {}
    for node in onnx.load(str(path)).graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        if "pkg.torch.onnx.name_scopes" not in meta:
            continue
        names = [s for s in ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])[:-1] if s]  # last entry: the op
        for out in node.output:
            scopes[out] = names
            scopes[_OP_KEY + out] = [node.op_type]
    return scopes


_OP_KEY = "\0op:"  # scopes also remember which op made each value (not a valid ONNX value name)


def module_outputs(path: str | os.PathLike, image: torch.Tensor, scopes: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """{module path: output} for one image: each module's output is the last node (graph order)
    inside its scope."""
    import onnx

    from mbv3_mobile.graph import last_per_module

    values = intermediate_outputs(path, image[:1])
    # A value counts only when the op making it here is the one the exporter tagged: quantizers and
    # optimisers reuse names (ORT's QDQ quantizer drops a Relu after a Conv and gives the Conv its
    # output name, so that value is the pre-ReLU one).
    # Such a value is recorded as unknown (None), so that its module's containers are not given an
    # earlier value either.
    ordered = [(scopes[name][-1], values[name] if scopes.get(_OP_KEY + name, [node.op_type])[0] == node.op_type else None)
               for node in onnx.load(str(path)).graph.node
               for name in node.output if scopes.get(name) and name in values]
    return {k: v for k, v in last_per_module(ordered).items() if v is not None}
