"""Thin, bounded wrapper around the `adb` client (Debian's `adb` package, or the platform tools).

Every call has a timeout. Shell commands are built from argument lists with shlex.quote, so model
names with spaces or shell metacharacters reach the device as one literal argument.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import DeviceError

DEFAULT_TIMEOUT_S = 60.0


def quote_command(argv: list[str] | tuple[str, ...]) -> str:
    """One shell command line from arguments; each is quoted (device shells are mksh/sh)."""
    return " ".join(shlex.quote(str(a)) for a in argv)


@dataclass
class ShellResult:
    exit_code: int
    stdout: str
    stderr: str


class AdbTimeout(DeviceError):
    pass


class Adb:
    def __init__(self, adb_path: str | None = None, *, server_port: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        path = adb_path or os.environ.get("ADB") or shutil.which("adb")
        if not path:
            raise DeviceError("adb not found: install it (Debian: apt-get install adb; scripts/setup.sh does) "
                              "or set ADB=/path/to/adb")
        if not shutil.which(path):  # a name on PATH or a path, existing and executable
            raise DeviceError(f"adb {path!r} does not exist or is not executable: pass --adb /path/to/adb or set ADB "
                              "(Debian: apt-get install adb)")
        self.path = path
        self.server_port = server_port
        self.env = dict(os.environ if env is None else env)
        if server_port:
            self.env["ANDROID_ADB_SERVER_PORT"] = str(server_port)

    # ---- process plumbing ----
    def run(self, args: list[str], *, timeout: float = DEFAULT_TIMEOUT_S, what: str = "") -> subprocess.CompletedProcess:
        cmd = [self.path, *args]
        # Own process group: on timeout the client and anything it spawned go together.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=self.env, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.communicate(timeout=10)
            raise AdbTimeout(f"`adb {' '.join(args[:4])}{' ...' if len(args) > 4 else ''}` did not finish in "
                             f"{timeout:g} s{f' ({what})' if what else ''}") from None
        return subprocess.CompletedProcess(cmd, proc.returncode, out.decode(errors="replace"),
                                           err.decode(errors="replace"))

    def start_server(self) -> None:
        r = self.run(["start-server"], timeout=30)
        if r.returncode != 0:
            raise DeviceError(f"could not start the adb server: {(r.stderr or r.stdout).strip()}")

    def kill_server(self) -> None:
        try:
            self.run(["kill-server"], timeout=15)
        except AdbTimeout:
            pass

    def connect(self, hostport: str, *, timeout: float = 20) -> None:
        r = self.run(["connect", hostport], timeout=timeout)
        text = (r.stdout + r.stderr).strip()
        if r.returncode != 0 or not re.search(r"(already )?connected to", text):
            raise DeviceError(f"adb connect {hostport} failed: {text}")

    # ---- devices ----
    def devices(self) -> list[tuple[str, str]]:
        """[(serial, state)] as `adb devices` lists them (state: device, offline, unauthorized, ...)."""
        r = self.run(["devices"], timeout=30)
        if r.returncode != 0:
            raise DeviceError(f"`adb devices` failed: {(r.stderr or r.stdout).strip()}")
        out = []
        for line in r.stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 2:
                out.append((parts[0], parts[1]))
        return out

    def select(self, serial: str | None) -> str:
        """The serial to use, or a DeviceError saying why there is none / which to pick."""
        devs = self.devices()
        if serial:
            states = dict(devs)
            if serial not in states and re.fullmatch(r"[\w.-]+:\d+", serial):
                self.connect(serial)  # a network device: attach it
                states = dict(self.devices())
            if serial not in states:
                listed = ", ".join(f"{s} ({st})" for s, st in devs) or "none"
                raise DeviceError(f"device {serial!r} is not attached (adb devices lists: {listed}); check the "
                                  "serial, the cable and that USB debugging is on")
            _check_state(serial, states[serial])
            return serial
        if not devs:
            raise DeviceError("no device found (adb devices lists none): attach a phone with USB debugging on, "
                              "or `adb connect HOST:PORT`, then pass --serial")
        if len(devs) > 1:
            listed = ", ".join(f"{s} ({st})" for s, st in devs)
            raise DeviceError(f"{len(devs)} devices attached ({listed}): pass --serial to choose one")
        _check_state(*devs[0])
        return devs[0][0]

    def wait_for(self, serial: str, timeout: float) -> bool:
        """Wait (bounded) until `serial` is back online; reconnects a network device. True if online."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if re.fullmatch(r"[\w.-]+:\d+", serial):
                    self.run(["connect", serial], timeout=max(1.0, min(5.0, deadline - time.monotonic())))
                if dict(self.devices()).get(serial) == "device":
                    return True
            except DeviceError:
                pass
            time.sleep(0.5)
        return False

    # ---- per-device commands ----
    def shell(self, serial: str, command: str | list[str], *, timeout: float = DEFAULT_TIMEOUT_S,
              what: str = "") -> ShellResult:
        """Run one command line on the device (a list is quoted argument by argument).

        Needs the device's shell protocol v2 (Android 7+) for the exit code; older devices report 0."""
        line = command if isinstance(command, str) else quote_command(command)
        r = self.run(["-s", serial, "shell", line], timeout=timeout, what=what)
        if r.returncode == 1 and re.search(r"^error: (device .*not found|device offline|closed|no devices)",
                                            r.stderr, re.M):
            raise DeviceError(f"device {serial} went away while running {what or 'a command'}: {r.stderr.strip()}")
        return ShellResult(r.returncode, r.stdout, r.stderr)

    def check_shell(self, serial: str, command: str | list[str], *, timeout: float = DEFAULT_TIMEOUT_S,
                    what: str = "") -> str:
        r = self.shell(serial, command, timeout=timeout, what=what)
        if r.exit_code != 0:
            raise DeviceError(f"{what or 'device command'} failed on {serial} (exit {r.exit_code}): "
                              f"{(r.stderr or r.stdout).strip()[-400:]}")
        return r.stdout

    def push(self, serial: str, local: list[Path], remote_dir: str, *, timeout: float = 300) -> None:
        """Push files into an existing device folder (one adb call)."""
        r = self.run(["-s", serial, "push", *[str(p) for p in local], remote_dir.rstrip("/") + "/"],
                     timeout=timeout, what=f"pushing {len(local)} files to {remote_dir}")
        if r.returncode != 0:
            text = (r.stdout + r.stderr).strip()
            if re.search(r"No space left|ENOSPC", text):
                raise DeviceError(f"device {serial} is out of storage while pushing to {remote_dir}: free space "
                                  f"on the device (adb shell df {remote_dir}) and rerun\n  adb said: {_last(text)}")
            if re.search(r"remote |Permission denied|Read-only", text):
                raise DeviceError(f"{serial} refused the files for {remote_dir}: {_last(text)}")
            raise DeviceError(f"pushing to {serial}:{remote_dir} failed (the device disconnected or adb lost it): "
                              f"{_last(text)}")

    def pull(self, serial: str, remote: str, local: Path, *, timeout: float = 120) -> None:
        r = self.run(["-s", serial, "pull", remote, str(local)], timeout=timeout, what=f"pulling {remote}")
        if r.returncode != 0:
            raise DeviceError(f"pulling {serial}:{remote} failed: {_last((r.stdout + r.stderr).strip())}")


def _check_state(serial: str, state: str) -> None:
    if state == "device":
        return
    hints = {"unauthorized": "unlock the phone and accept the 'Allow USB debugging' prompt",
             "offline": "reconnect the cable or run `adb reconnect`",
             "no": "check permissions (udev rules) for the USB device"}
    raise DeviceError(f"device {serial} is {state}: {hints.get(state, 'reconnect it')}")


def _last(text: str, n: int = 3) -> str:
    return " | ".join(text.splitlines()[-n:])
