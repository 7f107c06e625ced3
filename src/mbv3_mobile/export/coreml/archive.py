"""Deterministic .zip of an .mlpackage for drop-in (a package is a folder)."""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

from mbv3_mobile.core.atomic import atomic_path
from mbv3_mobile.export.coreml.convert import CoreMLExportError

log = logging.getLogger(__name__)

# Deployment targets this module knows, oldest first. ML programs need iOS 15+.
TARGETS: tuple[str, ...] = ("iOS13", "iOS14", "iOS15", "iOS16", "iOS17", "iOS18")

# ---------------------------------------------------------------- zip for drop-in


_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def zip_mlpackage(package_dir: str | os.PathLike, zip_path: str | os.PathLike) -> Path:
    """Zip an `.mlpackage` folder deterministically (atomically written).

    Entries are sorted, stored under the package's folder name (so unzipping yields
    `Name.mlpackage/...`), with a fixed 1980-01-01 timestamp, fixed permissions and DEFLATE level 9:
    the same package bytes always give the same zip bytes.
    """
    package_dir, zip_path = Path(package_dir), Path(zip_path)
    if not package_dir.is_dir() or package_dir.suffix != ".mlpackage":
        raise CoreMLExportError(f"{package_dir} is not an .mlpackage folder")
    root = package_dir.name
    entries = sorted(p for p in package_dir.rglob("*"))
    with atomic_path(zip_path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            for path in entries:
                rel = path.relative_to(package_dir).as_posix()
                if path.is_dir():
                    info = zipfile.ZipInfo(f"{root}/{rel}/", date_time=_ZIP_EPOCH)
                    info.external_attr = (0o40755 << 16) | 0x10
                    zf.writestr(info, b"")
                    continue
                info = zipfile.ZipInfo(f"{root}/{rel}", date_time=_ZIP_EPOCH)
                info.external_attr = 0o100644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3
                zf.writestr(info, path.read_bytes(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return zip_path
