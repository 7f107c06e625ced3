"""torch.export with errors a user can act on: a failure inside torch.export (or a later lowering)
becomes one `ExportError` line naming the op and the nn.Module path, the original exception
chained. Shared by the formats and by quantization (which exports for PT2E); `lowering_error`
turns a backend's failure on a program into the same kind of line."""

from __future__ import annotations

import os
import re
import traceback

import torch
from torch import nn

from mbv3_mobile.core.errors import UserError
from mbv3_mobile.graph.nodes import describe_module, node_module, nodes_for_op

_MAX_MESSAGE = 400


class ExportError(UserError):
    """torch.export or the ExecuTorch lowering failed; the message names the op and module path."""

    def __init__(self, message: str, *, op: str | None = None, module: str | None = None) -> None:
        super().__init__(message)
        self.op, self.module = op, module



# ---------------------------------------------------------------- error translation


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 3] + "..."
    return type(exc).__name__


def exception_chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


_QUALIFIED_OP_RE = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*::[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)")
_DOTTED_OP_RE = re.compile(r"\b((?:aten|quantized_decomposed|dim_order_ops|torchvision)\.[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)")


def op_in_text(text: str) -> str | None:
    """The first operator named in an error message ('ns::op[.overload]' or 'aten.op[.overload]')."""
    for regex in (_QUALIFIED_OP_RE, _DOTTED_OP_RE):
        m = regex.search(text)
        if m:
            return m.group(1).replace("::", ".")
    return None


_TORCH_DIR = os.path.dirname(torch.__file__)


def _module_frame(exc: BaseException, model: nn.Module | None) -> tuple[str | None, str | None]:
    """(module path, 'file:line `code`') for the innermost forward() of `model` in the traceback:
    the path of the innermost named submodule whose code was running, and the innermost line of
    code outside torch itself (the user's line)."""
    if model is None:
        return None, None
    names = {id(m): name for name, m in model.named_modules()}
    for e in exception_chain(exc):
        path = where = None
        for frame_summary, (frame, _) in zip(traceback.extract_tb(e.__traceback__), traceback.walk_tb(e.__traceback__)):
            owner = frame.f_locals.get("self")
            if isinstance(owner, nn.Module) and id(owner) in names:
                path = names[id(owner)] or f"<root {type(owner).__name__}>"
                if not frame_summary.filename.startswith(_TORCH_DIR):
                    where = f"{os.path.basename(frame_summary.filename)}:{frame_summary.lineno} `{(frame_summary.line or '').strip()}`"
        if path is not None:
            return path, where
    return None, None


class _quiet_export:
    """torch.export prints the partial FX graph to stderr on failure (torch/export/_trace.py) and
    logs whole graphs on data-dependent errors; the ExportError says what matters. Capture stderr
    and keep those loggers at ERROR while exporting; on success the captured text is passed on."""

    _NAMES = ("torch.fx.experimental.symbolic_shapes", "torch._export", "torch.export")

    def __enter__(self):
        import contextlib
        import io
        import logging

        self._saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in self._NAMES]
        for logger, _ in self._saved:
            logger.setLevel(logging.ERROR)
        self._buffer = io.StringIO()
        self._redirect = contextlib.redirect_stderr(self._buffer)
        self._redirect.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        import sys

        self._redirect.__exit__(exc_type, exc, tb)
        for logger, level in self._saved:
            logger.setLevel(level)
        if exc_type is None and self._buffer.getvalue():
            sys.stderr.write(self._buffer.getvalue())
        return False


_CALL_RE = re.compile(r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.+)')


def _user_call_site(exc: BaseException) -> str | None:
    """'file:line `code`' from torch.export's "The following call raised this error" section."""
    for e in exception_chain(exc):
        found = _CALL_RE.findall(str(e))
        if found:
            filename, line, _, code = found[-1]
            return f"{os.path.basename(filename)}:{line} `{code.strip()}`"
    return None


# ---------------------------------------------------------------- export and lowering


def export_program(model: nn.Module, example: torch.Tensor, *, dynamic_batch: int | None = None):
    """torch.export (non-strict) of `model` for input `example`; static shapes unless
    `dynamic_batch` gives the largest batch. Failures raise ExportError naming op and module."""
    dynamic_shapes = None
    if dynamic_batch is not None:
        from torch.export import Dim

        dynamic_shapes = ({0: Dim("batch", min=1, max=dynamic_batch)},)
    try:
        with _quiet_export():
            return torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as exc:  # noqa: BLE001 - torch.export raises many unrelated types
        path, where = _module_frame(exc, model)
        where = _user_call_site(exc) or where
        text = " ".join(str(e) for e in exception_chain(exc))
        op = op_in_text(text)
        parts = ["torch.export failed"]
        if path is not None:
            parts.append(f" in module '{path}'")
        if op:
            parts.append(f" at op {op}")
        if where:
            parts.append(f" ({where})")
        raise ExportError(f"{''.join(parts)}: {type(exc).__name__}: {first_line(exc)}", op=op, module=path) from exc


def lowering_error(exc: BaseException, stage: str, program, *, backend: str = "ExecuTorch") -> ExportError:
    """A backend's failure while lowering `program`, as one line naming the op and, where the
    program has a node running it, the nn.Module it came from."""
    text = " ".join(str(e) for e in exception_chain(exc))
    op = op_in_text(text)
    module = cls = None
    if op:
        nodes = nodes_for_op(program, op)
        if nodes:
            module, cls = node_module(nodes[0])
    msg = f"{backend} lowering failed in {stage}"
    if op:
        msg += f" at op {op}"
    if module:
        msg += f" in module {describe_module(module, cls)}"
    return ExportError(f"{msg}: {type(exc).__name__}: {first_line(exc)}", op=op, module=module)
