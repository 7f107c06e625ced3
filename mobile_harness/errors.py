"""Errors the harness reports to a person: each message says what went wrong and how to fix it.

They derive from mbv3_mobile's UserError so the project's CLIs print them without a traceback."""

from __future__ import annotations

from mbv3_mobile.core.errors import UserError


class HarnessError(UserError):
    """Base: a benchmark could not be run or its results cannot be trusted."""


class BuildError(HarnessError):
    """The native runner could not be configured or built."""


class DeviceError(HarnessError):
    """No usable device: none attached, several without a serial, offline, disconnected, full."""


class RunnerError(HarnessError):
    """The native runner failed on the target (non-zero exit, crash, bad output)."""

    def __init__(self, message: str, *, exit_code: int | None = None, output: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.output = output


class RunnerTimeout(RunnerError):
    """The native runner did not finish in time (it was killed)."""


class VerificationError(RunnerError):
    """The runner's outputs differ from the bundled expected outputs."""
