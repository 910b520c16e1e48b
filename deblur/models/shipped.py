"""Models that ship inside the package, by name: what every job uses when no model is given.

`load_generator("default")`, `load_engine("default")`, `--model default` (or no `--model` at all) all
mean the model `DEFAULT` names; its model card (`weights/<name>.md`) says how it was trained and what it
scores. A shipped name is only ever looked up here, never on storage, so a folder called `default`
next to the user's photos cannot be mistaken for it: pass `./default` for that.
"""
from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).with_name("weights")
DEFAULT = "deblur-nafnet-v1"
ALIASES = {"default": DEFAULT}


def shipped_models() -> list[str]:
    return sorted(p.stem for p in WEIGHTS.glob("*.pt"))


def shipped_path(name: str) -> str | None:
    """The file of a shipped model's name (or alias), else None."""
    name = ALIASES.get(str(name), str(name))
    path = WEIGHTS / f"{name}.pt"
    return str(path) if "/" not in name and path.is_file() else None


def model_card(name: str = DEFAULT) -> Path:
    return WEIGHTS / f"{ALIASES.get(name, name)}.md"
