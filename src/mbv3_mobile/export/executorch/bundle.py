"""BundledProgram (.bpte): the published .pte bytes plus real test pictures and their expected
outputs, built with ExecuTorch's devtools and verified in its runtime."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import torch

from mbv3_mobile.core.atomic import atomic_path
from mbv3_mobile.core.errors import UserError
from mbv3_mobile.export.executorch.lower import LoweredProgram, _as_bytes
from mbv3_mobile.export.executorch.runtime import _load_method
from mbv3_mobile.graph import ExportError, first_line


class BundleVerificationError(UserError):
    """A BundledProgram's outputs in the ExecuTorch runtime do not match its expected outputs."""



# ---------------------------------------------------------------- BundledProgram (.bpte)


def bundle_program(program, inputs: torch.Tensor, expected_outputs: torch.Tensor) -> bytes:
    """A BundledProgram: the .pte plus test cases (inputs, expected outputs), serialised to bytes.

    `program`: LoweredProgram, ExecutorchProgramManager, or the .pte itself (bytes or path: the
    bundle then holds exactly those bytes, no re-lowering). `inputs` (N, 3, R, R) real images are
    cut into cases of the program's fixed batch; `expected_outputs` (N, classes) are the matching
    reference outputs (eager logits for fp32; for int8, the .pte's own outputs from `run_pte`,
    i.e. golden outputs that catch a runtime/device regression)."""
    import tempfile

    from executorch.devtools import BundledProgram
    from executorch.devtools.bundled_program.config import MethodTestCase, MethodTestSuite
    from executorch.devtools.bundled_program.serialize import serialize_from_bundled_program_to_flatbuffer

    if isinstance(program, (bytes, bytearray, str, os.PathLike)):
        manager, pte_bytes = None, _as_bytes(program)
    else:  # LoweredProgram or ExecutorchProgramManager
        manager, pte_bytes = (program.executorch if isinstance(program, LoweredProgram) else program), None
    meta = _load_method(pte_bytes if pte_bytes is not None else manager.buffer).metadata
    in_shape = tuple(meta.input_tensor_meta(0).sizes())
    out_shape = tuple(meta.output_tensor_meta(0).sizes())
    batch = in_shape[0]
    if (len(inputs) == 0 or len(inputs) != len(expected_outputs) or len(inputs) % batch
            or tuple(inputs.shape[1:]) != in_shape[1:] or tuple(expected_outputs.shape[1:]) != out_shape[1:]):
        raise ExportError(
            f"bundle cases do not fit the program: inputs {tuple(inputs.shape)} / expected outputs "
            f"{tuple(expected_outputs.shape)} for a program taking {in_shape} and returning {out_shape}"
        )
    cases = [
        MethodTestCase(inputs=[inputs[i : i + batch].float().contiguous()],
                       expected_outputs=[expected_outputs[i : i + batch].float().contiguous()])
        for i in range(0, len(inputs), batch)
    ]
    suites = [MethodTestSuite(method_name="forward", test_cases=cases)]
    try:
        if pte_bytes is None:
            return serialize_from_bundled_program_to_flatbuffer(BundledProgram(manager, suites))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "program.pte"
            path.write_bytes(pte_bytes)
            return serialize_from_bundled_program_to_flatbuffer(BundledProgram(None, suites, pte_file_path=str(path)))
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"cannot build the BundledProgram: {type(exc).__name__}: {first_line(exc)}") from exc


def write_bundled_program(path: str | os.PathLike, program, inputs: torch.Tensor, expected_outputs: torch.Tensor) -> Path:
    """`bundle_program` written atomically to `path` (.bpte)."""
    data = bundle_program(program, inputs, expected_outputs)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)


def verify_bundled_program(bundle, *, num_cases: int | None = None, rtol: float = 1e-5, atol: float = 1e-4) -> dict:
    """Run every bundled test case in the ExecuTorch runtime and check it against its expected output
    (|actual - expected| <= atol + rtol * |expected|, ExecuTorch's own check).

    `bundle`: .bpte bytes or path. `num_cases` defaults to the count stored in the bundle.
    Returns {'cases': n, 'rtol', 'atol'}; raises BundleVerificationError on the first mismatch."""
    from executorch.extension.pybindings import portable_lib

    data = _as_bytes(bundle)
    if num_cases is None:
        num_cases = bundled_case_count(data)
    if num_cases < 1:
        raise BundleVerificationError("the bundled program holds no test cases")
    try:
        module = portable_lib._load_bundled_program_from_buffer(data)
    except Exception as exc:  # noqa: BLE001
        raise BundleVerificationError(f"the ExecuTorch runtime cannot load the bundle: {first_line(exc)}") from exc
    for i in range(num_cases):
        try:
            module.verify_result_with_bundled_expected_output("forward", i, rtol, atol)
        except Exception as exc:  # noqa: BLE001 - pybind raises RuntimeError with a status code
            raise BundleVerificationError(
                f"bundled test case {i}/{num_cases} failed in the ExecuTorch runtime "
                f"(rtol={rtol:g}, atol={atol:g}): {first_line(exc)}"
            ) from exc
    return {"cases": num_cases, "rtol": rtol, "atol": atol}


def bundled_case_count(bundle) -> int:
    """Number of test cases of the 'forward' suite in a .bpte (read from its flatbuffer)."""
    return _BundleReader(_checked_bundle_bytes(bundle)).case_count()


def bundled_program_bytes(bundle) -> bytes:
    """The .pte bytes a .bpte wraps, exactly as stored."""
    return _BundleReader(_checked_bundle_bytes(bundle)).program()


def _checked_bundle_bytes(bundle) -> bytes:
    from executorch.devtools.bundled_program.serialize import _bundled_program_file_identifier

    data = _as_bytes(bundle)
    if len(data) < 8 or data[4:8] != _bundled_program_file_identifier():
        raise BundleVerificationError(
            f"not a BundledProgram (.bpte): file identifier {data[4:8]!r}, expected {_bundled_program_file_identifier()!r}"
        )
    return data


class _BundleReader:
    """Walk the bundled_program flatbuffer just far enough to count test cases and find the
    program bytes. Hand-written: executorch's deserializer converts the whole embedded program to
    JSON and back, slow for real models, and has no "program bytes" accessor in Python.

    Schema (bundled_program_schema.fbs): table BundledProgram { version: uint; method_test_suites:
    [BundledMethodTestSuite]; program: [ubyte]; }  table BundledMethodTestSuite { method_name: string;
    test_cases: [BundledMethodTestCase]; }"""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def _u32(self, off: int) -> int:
        return struct.unpack_from("<I", self.data, off)[0]

    def _field_pos(self, table: int, index: int) -> int | None:
        vtable = table - struct.unpack_from("<i", self.data, table)[0]
        vt_len = struct.unpack_from("<H", self.data, vtable)[0]
        slot = 4 + 2 * index
        if slot >= vt_len:
            return None
        rel = struct.unpack_from("<H", self.data, vtable + slot)[0]
        return table + rel if rel else None

    def case_count(self) -> int:
        try:
            suites_pos = self._field_pos(self._u32(0), 1)
            if suites_pos is None:
                return 0
            suites = suites_pos + self._u32(suites_pos)
            total = 0
            for k in range(self._u32(suites)):
                elem = suites + 4 + 4 * k
                suite = elem + self._u32(elem)
                name_pos = self._field_pos(suite, 0)
                name = ""
                if name_pos is not None:
                    s = name_pos + self._u32(name_pos)
                    name = self.data[s + 4 : s + 4 + self._u32(s)].decode()
                cases_pos = self._field_pos(suite, 1)
                if name == "forward" and cases_pos is not None:
                    total += self._u32(cases_pos + self._u32(cases_pos))
            return total
        except (struct.error, UnicodeDecodeError, IndexError) as exc:
            raise BundleVerificationError(f"not a BundledProgram flatbuffer: {exc}") from exc

    def program(self) -> bytes:
        try:
            pos = self._field_pos(self._u32(0), 2)
            if pos is None:
                raise BundleVerificationError("the BundledProgram holds no program")
            vec = pos + self._u32(pos)
            return bytes(self.data[vec + 4 : vec + 4 + self._u32(vec)])
        except (struct.error, IndexError) as exc:
            raise BundleVerificationError(f"not a BundledProgram flatbuffer: {exc}") from exc
