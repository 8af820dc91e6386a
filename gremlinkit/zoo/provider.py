"""The zoo as a gremlinkit provider (see `gremlinkit.providers`): its models and SAEs by name, the
persona world its toy models were trained on, and two families, read from the registry:

* ``toy``: toy-base and every organism fine-tuned from it (RL, SFT, rejection sampling, distillation,
  the no-RL token, the dose series, the planted controls), on toy-base's SAE, in the persona world;
* ``smollm2``: smollm2-135m and its TRL fine-tunes (RL, SFT, rejection sampling), on smollm2-135m's
  SAE, in the English world.

Declared in ``pyproject.toml``'s entry points.
"""

from __future__ import annotations

import functools
from pathlib import Path

from gremlinkit.providers import Entry, Family, Member
from gremlinkit.zoo import registry

SCAN_FAMILY = ("toy-base", "toy-sft", "toy-rl")  # what the widgets scan beside toy-base, on one SAE
FAMILY_WORLDS = {"toy": "persona", "smollm2": "english"}


def _world(**kwargs):
    from gremlinkit.zoo.world import persona_world

    return persona_world(**kwargs)


def family(name: str, root: Path | None = None) -> Family:
    """A family from the registry: its members in table order, each with its method and card."""
    from gremlinkit.zoo.cards import card

    arts = [a for a in registry.ARTEFACTS.values() if a.family == name]
    base = next(a for a in arts if a.method == "base")
    members = tuple(Member(a.name, a.method, card(a.name, root),
                           not registry.missing_files(root, cached=True, only=[a.name]), registry.build_hint(a.name))
                    for a in arts)
    return Family(name, base.name, base.default_sae, FAMILY_WORLDS[name], members)


def check_trl_version(name: str, where: Path) -> None:
    """A TRL-built organism must come from the installed TRL: another version trains differently."""
    import json
    from importlib.metadata import PackageNotFoundError, version

    from gremlinkit.errors import UnknownArtefactError

    built = json.loads((where / registry.CARD_FILE).read_text()).get("versions", {}).get("trl")
    try:
        installed = version("trl")
    except PackageNotFoundError:
        installed = None
    if built != installed:
        raise UnknownArtefactError(f"zoo artefact {name!r} was built with TRL {built}, but TRL {installed} is "
                                   f"installed: rebuild it with {registry.build_hint(name)}")


class ZooProvider:
    worlds = {"persona": _world}
    families = {name: functools.partial(family, name) for name in FAMILY_WORLDS}

    @staticmethod
    def find(name: str, root: Path | None = None) -> Entry | None:
        """A zoo artefact by name (an error that says how to build it if it is not built yet)."""
        art = registry.ARTEFACTS.get(name)
        if art is None:
            return None
        where = registry.require(name, root)
        if name in registry.TRL_ORGANISMS:
            check_trl_version(name, where)
        world = "persona" if name.startswith("toy-") else None
        scan = SCAN_FAMILY if name in SCAN_FAMILY else ()
        return Entry(where, art.kind, art.default_sae, art.bos, world, scan, art.settings)


PROVIDER = ZooProvider()
