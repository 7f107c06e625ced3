"""Where the project keeps what it makes once and reuses: trained recipes, generated test beds."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$MBV3_CACHE, else ~/.cache/mbv3-mobile (pipelines keep their stage cache under it too)."""
    return Path(os.environ.get("MBV3_CACHE", Path.home() / ".cache" / "mbv3-mobile"))
