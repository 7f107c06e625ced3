"""Writing cards: at publish time (inside the atomic publish) and when parity / bench refresh them."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from mbv3_mobile.card.build import build_card
from mbv3_mobile.card.common import (
    CARD_JSON,
    CARD_MD,
    MANIFEST,
    SCHEMA,
    sha256,
)
from mbv3_mobile.card.provenance import export_from_context, training_info
from mbv3_mobile.card.render import markdown
from mbv3_mobile.core.atomic import atomic_path


def write_card(folder: str | os.PathLike, **kwargs) -> dict:
    """Build the card (everything checked first) and write both files, each atomically."""
    folder = Path(folder)
    previous = None
    if (folder / CARD_JSON).is_file() and "previous" not in kwargs:
        try:
            previous = json.loads((folder / CARD_JSON).read_text())
        except (OSError, json.JSONDecodeError):
            previous = None  # an unreadable old card is rebuilt from the manifest
        if previous and (previous.get("schema") != SCHEMA
                         or previous.get("manifest", {}).get("sha256") != sha256(folder / MANIFEST)):
            previous = None  # a card of another manifest (or schema) says nothing about this one
    card = build_card(folder, previous=kwargs.pop("previous", previous), **kwargs)
    text = markdown(card)
    with atomic_path(folder / CARD_JSON) as tmp:
        tmp.write_text(json.dumps(card, indent=2, default=str) + "\n")
        with atomic_path(folder / CARD_MD) as tmp_md:
            tmp_md.write_text(text)
    return card


def refresh_cards(folders: Iterable[str | os.PathLike], **kwargs) -> list[Path]:
    """The hook for `mbv3 parity` / `mbv3 bench`: refresh each folder's card with new figures."""
    done = []
    for f in folders:
        write_card(f, **kwargs)
        done.append(Path(f) / CARD_MD)
    return done


def write_card_at_publish(ctx, folder: Path, final: Path) -> None:
    """Called inside the package stage's atomic publish, after the manifest is written."""
    resolved = ctx.inputs["resolve"]
    meta = resolved.meta
    # The resolved copy carries the source checkpoint's metadata; the source itself may move later.
    source = {"path": meta.get("source"), "format": meta.get("source_format"), "sha256": meta.get("source_sha256")}
    training = training_info(resolved.out("model"), source)
    write_card(folder, export=export_from_context(ctx), training=training, previous=None, published_as=final)
