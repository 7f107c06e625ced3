"""Weight-compression recipes (`coremltools.optimize.coreml`), as data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Compression:
    """A `coremltools.optimize.coreml` weight-compression recipe."""

    name: str
    kind: str  # "linear" | "palettize"
    options: dict
    min_target: str
    description: str


COMPRESSIONS: dict[str, Compression] = {
    c.name: c
    for c in (
        Compression(
            "int8", "linear", {"mode": "linear_symmetric", "dtype": "int8", "granularity": "per_channel"},
            "iOS16", "int8 linear symmetric weight quantization, one scale per output channel",
        ),
        Compression(
            "palette6", "palettize", {"nbits": 6, "mode": "kmeans", "granularity": "per_tensor"},
            "iOS16", "6-bit k-means palettization (64-entry look-up table per weight tensor)",
        ),
        Compression(
            "int4_block", "linear",
            {"mode": "linear_symmetric", "dtype": "int4", "granularity": "per_block", "block_size": 32},
            "iOS18", "int4 linear symmetric weight quantization, one scale per block of 32 input channels",
        ),
    )
}
DEFAULT_WEIGHT_THRESHOLD = 2048  # coremltools' default: smaller weight tensors stay uncompressed

# The variants a pipeline builds by default: name -> export_coreml keyword arguments.
DEFAULT_VARIANTS: dict[str, dict] = {
    "fp16": {"precision": "fp16"},
    "fp32": {"precision": "fp32"},
    "fp16_int8": {"precision": "fp16", "compression": "int8"},
    "fp16_palette6": {"precision": "fp16", "compression": "palette6"},
}


