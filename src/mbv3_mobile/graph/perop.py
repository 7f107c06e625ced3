"""A program lowered to XNNPACK one op at a time, with an ETRecord, to read per-op values and times.

The shipped .pte is one XNNPACK delegate: the runtime sees only its final output and its total
time. Lowered again with `XnnpackPartitioner(per_op_mode=True)`, each op (or quantized
dq -> op -> q group) becomes its own delegate call: the same kernels minus cross-op fusion. ETDump
then logs every call (its output with a debug buffer, its time always) and the devtools Inspector
maps each call back to the edge graph's nodes by debug handle. Drift localisation reads the
values (`export.executorch.debug`), the bench's profile the times.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from mbv3_mobile.graph.export import lowering_error


class PerOpLowering:
    """`program` (an ExportedProgram) lowered once per op, ready to run; files live as long as it."""

    def __init__(self, program, *, what: str = "per-op lowering") -> None:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        try:
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner(per_op_mode=True)],
                                               generate_etrecord=True)
            manager = edge.to_executorch()
            etrecord = manager.get_etrecord()
        except Exception as exc:  # noqa: BLE001 - EXIR raises many types
            raise lowering_error(exc, what, program) from exc
        self.edge_graph = etrecord.edge_dialect_program.graph
        # A debug handle can be shared (an op and the quantize that follows it).
        self.by_handle: dict[int, list[torch.fx.Node]] = {}
        for n in self.edge_graph.nodes:
            if n.op == "call_function" and isinstance(n.meta.get("debug_handle"), int):
                self.by_handle.setdefault(n.meta["debug_handle"], []).append(n)
        self._dir = tempfile.TemporaryDirectory(prefix="mbv3-perop-")  # removed with this object
        self.pte = str(Path(self._dir.name) / "perop.pte")
        self.etrecord = str(Path(self._dir.name) / "etrecord.bin")
        Path(self.pte).write_bytes(manager.buffer)
        # The Inspector resolves instruction -> debug handle only from a serialised ETRecord (the
        # in-memory one lacks the handle maps).
        etrecord.save(self.etrecord)

    def inspect(self, x: torch.Tensor, *, runs: int = 1, warmup: int = 0, threads: int | None = None,
                debug_buffer: bool = False) -> tuple[object, float]:
        """Run `x` (one picture) `warmup` + `runs` times with ETDump on; (the devtools Inspector over
        the logged runs, wall ms per timed run). `debug_buffer` also logs every call's output."""
        from executorch.devtools import Inspector
        from executorch.extension.pybindings import portable_lib

        if threads is not None:
            portable_lib._unsafe_reset_threadpool(threads)  # must precede the load to take effect
        with tempfile.TemporaryDirectory(prefix="mbv3-etdump-") as tmp:
            dump, debug = str(Path(tmp) / "run.etdp"), str(Path(tmp) / "debug.bin")
            kwargs = {"enable_etdump": True, **({"debug_buffer_size": 256 << 20} if debug_buffer else {})}
            runtime = portable_lib._load_for_executorch(self.pte, **kwargs)
            xi = (x[:1].float().contiguous(),)
            for _ in range(warmup):
                runtime.forward(xi)
            t0 = time.perf_counter()
            for _ in range(runs):
                runtime.forward(xi)
            wall_ms = (time.perf_counter() - t0) * 1e3 / max(runs, 1)
            if debug_buffer:
                runtime.write_etdump_result_to_file(dump, debug)
                inspector = Inspector(etdump_path=dump, etrecord=self.etrecord, debug_buffer_path=debug)
            else:
                runtime.write_etdump_result_to_file(dump)
                inspector = Inspector(etdump_path=dump, etrecord=self.etrecord)
        return inspector, wall_ms
