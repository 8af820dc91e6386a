"""The zoo as a gremlinkit provider (see `gremlinkit.providers`): its models and SAEs by name, and
the persona world its toy models were trained on. Declared in ``pyproject.toml``'s entry points."""

from __future__ import annotations

from pathlib import Path

from gremlinkit.providers import Entry
from gremlinkit.zoo import registry

FAMILY = ("toy-base", "toy-sft", "toy-rl")  # the base organism and its two fine-tunes, on one SAE


def _world(**kwargs):
    from gremlinkit.zoo.world import persona_world

    return persona_world(**kwargs)


class ZooProvider:
    worlds = {"persona": _world}

    @staticmethod
    def find(name: str, root: Path | None = None) -> Entry | None:
        """A zoo artefact by name (an error that says how to build it if it is not built yet)."""
        art = registry.ARTEFACTS.get(name)
        if art is None:
            return None
        world = "persona" if name.startswith("toy-") else None
        family = FAMILY if name in FAMILY else ()
        return Entry(registry.require(name, root), art.kind, art.default_sae, art.bos, world, family)


PROVIDER = ZooProvider()
