"""The models that ship with the code (`train/zoo/models.toml` + `<name>.safetensors`), checked by
sha256 on every use. Apart from `train.zoo` (which also trains recipes) so that a trainer can start
from a shipped model without importing the training loop back."""

from __future__ import annotations

import tomllib
from pathlib import Path

from mbv3_mobile.core.errors import UserError
from mbv3_mobile.core.hashing import sha256_file

HERE = Path(__file__).parent / "zoo"
EMBEDDED_PREFIX = "embedded:"  # "embedded:default" names a shipped model where a checkpoint path is asked for


def shipped() -> dict[str, dict]:
    """models.toml: the models that ship with the code, by recipe name."""
    return tomllib.loads((HERE / "models.toml").read_text()).get("models", {})


def embedded(name: str) -> Path | None:
    """The shipped checkpoint of recipe `name`, checked against its recorded sha256; None if the
    recipe ships no model."""
    entry = shipped().get(name)
    if entry is None:
        return None
    path = HERE / entry["file"]
    if not path.is_file():
        raise UserError(f"the embedded model {path} is missing from this installation; restore it "
                        f"(`git checkout -- {path.name}` in a checkout) or reproduce it: mbv3 train --recipe {name}")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise UserError(f"the embedded model {path} is damaged (sha256 {digest[:12]}…, expected "
                        f"{entry['sha256'][:12]}…); restore it (`git checkout -- {path.name}`) or reinstall")
    return path


def resolve(spec: str) -> str:
    """A checkpoint argument: "embedded:NAME" becomes that shipped file's path; a path stays itself."""
    if not spec.startswith(EMBEDDED_PREFIX):
        return spec
    name = spec.removeprefix(EMBEDDED_PREFIX)
    path = embedded(name)
    if path is None:
        raise UserError(f"{spec!r}: no shipped model is called {name!r}; shipped: {', '.join(sorted(shipped()))}")
    return str(path)
