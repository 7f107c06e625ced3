"""Per-op profile from an ETDump, via ExecuTorch's own Inspector. The wheel's XNNPACK delegate
records its operators (e.g. "Convolution (NHWC, F32) IGEMM #3"), so this shows where the time
goes inside the delegate, not just one DELEGATE_CALL."""

from __future__ import annotations

from pathlib import Path

# Wrappers whose time is the sum of the ops inside them.
_WRAPPERS = {"Method::execute", "DELEGATE_CALL", "OPERATOR_CALL"}


def top_ops(etdump: str | Path, n: int = 10) -> list[dict]:
    """The `n` ops with the largest mean time per execution, as [{"op", "avg_ms", "share"}]."""
    from executorch.devtools import Inspector

    df = Inspector(etdump_path=str(etdump)).to_dataframe()
    df = df[(df["event_block_name"] == "Execute") & ~df["event_name"].isin(_WRAPPERS)]
    per_op = df.groupby("event_name")["avg (ms)"].sum().sort_values(ascending=False)
    total = float(per_op.sum()) or 1.0
    return [{"op": str(k), "avg_ms": float(v), "share": float(v) / total} for k, v in per_op.head(n).items()]
