"""Atomic, durable writes: build beside the target, flush it to disk, rename onto the target only
when complete, then flush the folder entry. An interrupted run never leaves a half-written file or
folder that a later run would trust, and a power cut after the rename does not bring back the old
bytes or an empty file (the fsync before and after the rename).

Disk errors (no space, no permission, read-only file system) become one `DiskError` line naming
the path and the fix; the temp file or folder is removed.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from mbv3_mobile.core.errors import UserError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()

_FIXES = {
    errno.ENOSPC: ("no space left on the device", "free space there (or point the output/cache elsewhere: --out, MBV3_CACHE)"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota (or point the output/cache elsewhere: --out, MBV3_CACHE)"),
    errno.EACCES: ("permission denied", "make the folder writable for this user, or choose another --out / MBV3_CACHE"),
    errno.EPERM: ("operation not permitted", "make the folder writable for this user, or choose another --out / MBV3_CACHE"),
    errno.EROFS: ("read-only file system", "write to a writable location: --out DIR (outputs) or MBV3_CACHE=DIR (cache)"),
}


class DiskError(UserError, OSError):
    """A write failed for a reason the user fixes on the machine (space, permissions, read-only)."""


def disk_error(exc: OSError, path: str | os.PathLike) -> OSError:
    """`exc` as a one-line DiskError when it is a space/permission/read-only failure, else `exc`."""
    if isinstance(exc, DiskError) or exc.errno not in _FIXES:
        return exc
    what, fix = _FIXES[exc.errno]
    err = DiskError(f"cannot write {path}: {what} ({os.strerror(exc.errno)}); {fix}; nothing was left half-written")
    err.errno = exc.errno
    return err


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's data, or a folder's entries, to the device."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            fsync_path(Path(folder) / name)
        fsync_path(folder)


class atomic_path:
    """Yield a temp file path beside `path`; on success it is flushed and renamed onto `path`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __enter__(self) -> Path:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        except OSError as exc:
            raise disk_error(exc, self.path) from None
        os.close(fd)
        self.tmp = Path(tmp)
        os.chmod(self.tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make published files private
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                fsync_path(self.tmp)
                os.replace(self.tmp, self.path)
                fsync_path(self.path.parent)
                return False
            except OSError as err:
                self.tmp.unlink(missing_ok=True)
                raise disk_error(err, self.path) from None
        self.tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and disk_error(exc, self.path) is not exc:
            raise disk_error(exc, self.path) from None
        return False


class atomic_dir:
    """Yield an empty temp folder beside `path`; on success it is flushed and replaces `path`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __enter__(self) -> Path:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent))
        except OSError as exc:
            raise disk_error(exc, self.path) from None
        os.chmod(self.tmp, 0o777 & ~_UMASK)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, OSError) and disk_error(exc, self.path) is not exc:
                raise disk_error(exc, self.path) from None
            return False
        try:
            _fsync_tree(self.tmp)
            if self.path.exists():
                # Two renames keep the window without a valid folder to a minimum.
                old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".old", dir=self.path.parent))
                os.replace(self.path, old / "x")
                os.replace(self.tmp, self.path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self.tmp, self.path)
            fsync_path(self.path.parent)
        except OSError as err:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise disk_error(err, self.path) from None
        return False


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)
