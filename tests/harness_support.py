"""Helpers for the device-harness tests that are not fixtures (fixtures: tests/harness_fixtures.py).

Importing this puts the repo root on sys.path: mobile_harness lives there, beside src/."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The example app's tensors: MobileNetV3-Small 0.5 at 32x32 (recipe "ci").
INPUT_SHAPE = (1, 3, 32, 32)


def harness_cli(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    """`python -m mobile_harness ARGS` from the repo root, as a person types it; output captured."""
    cmd = [sys.executable, "-m", "mobile_harness", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device_leftovers(dev, workdir: str = "/data/local/tmp/mbv3") -> list[str]:
    """Everything the harness left in its device work folder."""
    root = dev.device_path(workdir)
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))
