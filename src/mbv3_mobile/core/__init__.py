"""The small shared core every room (and mobile_harness) may use: user-facing errors, atomic and
durable writes, content hashes, thread-count picks, and the import-closure fingerprint of code (what
a cached stage's key and a zoo recipe's identity cover). It imports nothing else of the project."""

from mbv3_mobile.core.atomic import atomic_dir, atomic_path, write_text_atomic
from mbv3_mobile.core.errors import ConfigError, UserError
from mbv3_mobile.core.hashing import sha256_bytes, sha256_file

__all__ = ["ConfigError", "UserError", "atomic_dir", "atomic_path", "sha256_bytes", "sha256_file", "write_text_atomic"]
