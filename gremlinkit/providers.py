"""Named models, SAEs and worlds that other packages provide, found through entry points.

The core never imports a provider. A provider declares itself in its package metadata, as the zoo
does in ``pyproject.toml``::

    [project.entry-points."gremlinkit.providers"]
    zoo = "gremlinkit.zoo.provider:PROVIDER"

A provider object has ``find(name, root=None) -> Entry | None`` (a model or SAE it knows by that
name), ``worlds`` (name -> factory(seed, per_template) -> `gremlinkit.worlds.World`) and
``model_world(name) -> str | None`` (the world a model of its own was trained on).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

GROUP = "gremlinkit.providers"


@dataclass(frozen=True)
class Entry:
    """A named artefact: ``path`` is a local HF model or sae_lens directory."""

    path: Path
    kind: str  # "model" or "sae"
    default_sae: str | None = None  # the name of the SAE a model loads with unless told otherwise
    bos: bool | None = None  # the BOS policy a model loads with by default (None: its tokenizer's)
    world: str | None = None  # the world a model was trained on
    family: tuple[str, ...] = ()  # a base model and its fine-tunes, which share its SAE (base first)


@lru_cache(maxsize=1)
def providers() -> tuple[Any, ...]:
    """Every installed provider, in name order."""
    return tuple(ep.load() for ep in sorted(entry_points(group=GROUP), key=lambda ep: ep.name))


def find(name: str, root: Path | None = None) -> Entry | None:
    """The artefact some provider knows as ``name`` (built under ``root`` if given), or None."""
    for p in providers():
        entry = p.find(str(name), root)
        if entry is not None:
            return entry
    return None


def worlds() -> dict[str, Any]:
    """World factories by name, from every provider."""
    return {name: factory for p in providers() for name, factory in p.worlds.items()}
