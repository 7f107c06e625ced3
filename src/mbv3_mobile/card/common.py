"""Names and errors the model card's modules share."""

from __future__ import annotations

from pathlib import Path

from mbv3_mobile.core.errors import UserError
from mbv3_mobile.core.hashing import sha256_file

SCHEMA = "mbv3-model-card/1"
CARD_JSON, CARD_MD, MANIFEST = "model_card.json", "MODEL_CARD.md", "manifest.json"
HARNESS_SCHEMA = "mbv3-harness/1"
NOT_MEASURED = "not measured"
BENCH_SCHEMA = "mbv3-bench/1"


class ModelCardError(UserError):
    """The card cannot be built from these inputs; the message says which input and why."""



def sha256(path: Path) -> str:
    return sha256_file(path)
