"""The FX-graph toolkit every room that reads graphs uses (quantize, the formats, drift,
sensitivity, the bench's profile): torch.export with actionable errors, which nn.Module a node
came from, q/dq predicates, each module's output node, per-module outputs of a PT2E graph, and
the per-op XNNPACK lowering with an ETRecord."""

from mbv3_mobile.graph.export import (
    ExportError,
    exception_chain,
    export_program,
    first_line,
    lowering_error,
    op_in_text,
)
from mbv3_mobile.graph.nodes import (
    LAYOUT_OPS,
    after_requant,
    clean_path,
    describe_module,
    is_compute,
    is_conv_or_linear,
    is_dequantize,
    is_qdq,
    is_quantize,
    last_compute_node_per_module,
    last_per_module,
    module_class,
    module_path,
    node_module,
    nodes_for_op,
    op_name,
    quantized_source,
)
from mbv3_mobile.graph.outputs import graph_module_outputs
from mbv3_mobile.graph.perop import PerOpLowering

__all__ = ["LAYOUT_OPS", "ExportError", "PerOpLowering", "after_requant", "clean_path", "describe_module",
           "exception_chain", "export_program", "first_line", "graph_module_outputs", "is_compute", "is_conv_or_linear",
           "is_dequantize", "is_qdq", "is_quantize", "last_compute_node_per_module", "last_per_module", "lowering_error",
           "module_class", "module_path", "node_module", "nodes_for_op", "op_in_text", "op_name", "quantized_source"]
