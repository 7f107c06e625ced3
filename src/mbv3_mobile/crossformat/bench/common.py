"""Names every part of the bench shares."""

from __future__ import annotations

from mbv3_mobile.core.errors import UserError

SCHEMA = "mbv3-bench/1"
BASELINE = "eager_fp32"
QUICK = {"warmup": 3, "rounds": 3, "iters": 5, "probe_iters": 5, "train_warmup": 1, "train_steps": 2, "train_rounds": 2,
         "train_compile": False, "cold_export": False}


class BenchError(UserError):
    """A benchmark parameter or measurement the user can act on."""
