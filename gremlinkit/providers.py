"""Named models, SAEs and worlds that other packages provide, found through entry points.

The core never imports a provider. A provider declares itself in its package metadata, as the zoo
does in ``pyproject.toml``::

    [project.entry-points."gremlinkit.providers"]
    zoo = "gremlinkit.zoo.provider:PROVIDER"

A provider object has ``find(name, root=None) -> Entry | None`` (a model or SAE it knows by that
name), ``worlds`` (name -> factory(seed, per_template) -> `gremlinkit.worlds.World`) and
``families`` (name -> factory(root) -> `Family`).

A **family** is a base model and its fine-tunes: each member with how it was trained (its method)
and its card, the SAE they share and the world their text comes from. Experiments that compare
training methods take a family, so the toy family and the smollm2 family go through one code path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

GROUP = "gremlinkit.providers"


def fit_explained_variance(fit: dict) -> float | None:
    """The explained variance an SAE fit on a card is judged by: without massive activations
    (``explained_variance_typical``, `gremlinkit.interventions.reconstruction_fit`) where the card
    has it, else the pooled figure; None if neither."""
    return fit.get("explained_variance_typical", fit.get("explained_variance"))


@dataclass(frozen=True)
class Entry:
    """A named artefact: ``path`` is a local HF model or sae_lens directory."""

    path: Path
    kind: str  # "model" or "sae"
    default_sae: str | None = None  # the name of the SAE a model loads with unless told otherwise
    bos: bool | None = None  # the BOS policy a model loads with by default (None: its tokenizer's)
    world: str | None = None  # the world a model was trained on
    family: tuple[str, ...] = ()  # a base model and its fine-tunes, which share its SAE (base first)
    # What the notebooks' "auto" parameters become for this model (`settings`): dtype, unit_kinds, chunk_size,
    # probe_every
    settings: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Member:
    """One model of a family: its name, how it was trained and its card (empty if not built)."""

    name: str
    method: str  # "base", "on-policy RL", "off-policy SFT", "rejection sampling", "distillation", "planted", ...
    card: dict
    built: bool
    hint: str = ""  # how to build it

    def figure(self, key: str) -> float:
        """A headline figure from the card: ``reward``, ``kl_to_base``, ``weight_change``, ``rl_steps``,
        ``horizon``, ``sae_explained_variance`` (`fit_explained_variance`); 0 for the base where it is 0
        by definition, NaN where the card has none."""
        c, base = self.card, self.method == "base"
        weight = c.get("weight_change", {})
        sae = c.get("sae_fit") or c.get("sae_transfer") or {}
        values = {"reward": c.get("eval", {}).get("reward"),
                  "kl_to_base": c.get("eval", {}).get("kl_to_base", 0.0 if base else None),
                  "weight_change": weight.get("relative_to_base", weight.get("relative_to_toy_base",
                                                                              0.0 if base else None)),
                  "rl_steps": c.get("training", {}).get("steps", 0) if self.method == "on-policy RL" else 0,
                  "horizon": c.get("reward", {}).get("horizon", 0),
                  "sae_explained_variance": fit_explained_variance(sae)}
        if key not in values:
            raise KeyError(f"no figure {key!r}: a member has {sorted(values)}")
        return float("nan") if values[key] is None else float(values[key])


@dataclass(frozen=True)
class Family:
    """A base model and its fine-tunes, the SAE they share and the world their text comes from."""

    name: str
    base: str
    sae: str
    world: str
    members: tuple[Member, ...]
    min_sae_explained_variance: float = 0.7  # below this on a member, the shared SAE does not fit it

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def member(self, name: str) -> Member:
        from gremlinkit.errors import UnknownArtefactError

        for m in self.members:
            if m.name == name:
                return m
        raise UnknownArtefactError(f"{name!r} is not in the {self.name} family; its members: {self.names}")

    def require(self, names: list[str] | None = None) -> None:
        """Every named member (all by default) is built and the family's SAE fits it (explained
        variance at least ``min_sae_explained_variance`` on its card); else one error that lists
        each problem and how to fix it."""
        from gremlinkit.errors import UnknownArtefactError

        problems = []
        for m in (self.member(n) for n in (self.names if names is None else names)):
            ev = m.figure("sae_explained_variance")
            if not m.built:
                problems.append(f"{m.name} is not built: build it with {m.hint}")
            elif ev < self.min_sae_explained_variance:  # NaN (no figure on the card) passes
                problems.append(f"{self.sae} does not fit {m.name} (explained variance {ev:.3f} < "
                                f"{self.min_sae_explained_variance}): retrain it with "
                                f"`gremlinkit zoo build --only {self.sae}`, then rebuild {m.name} with {m.hint}")
        if problems:
            raise UnknownArtefactError(f"the {self.name} family is not ready: " + "; ".join(problems))

    def by_method(self, method: str) -> list[str]:
        """The members trained by ``method`` (e.g. "on-policy RL"), in the family's order."""
        return [m.name for m in self.members if m.method == method]

    def table(self):
        """One row per member: method, built, and its headline figures."""
        import pandas as pd

        keys = ("reward", "kl_to_base", "weight_change", "sae_explained_variance")
        return pd.DataFrame([{"model": m.name, "method": m.method, "built": m.built,
                              **{k: m.figure(k) for k in keys}} for m in self.members])


@lru_cache(maxsize=1)
def providers() -> tuple[Any, ...]:
    """Every installed provider, in name order."""
    return tuple(ep.load() for ep in sorted(entry_points(group=GROUP), key=lambda ep: ep.name))


def settings(model: str) -> dict[str, Any]:
    """What a notebook's ``"auto"`` parameters become for ``model``: its provider's recommendation
    (dtype, sign-flip unit kinds, scan chunk size), empty for a model no provider knows."""
    entry = find(str(model)) if model else None
    return dict(entry.settings) if entry is not None else {}


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


def families() -> dict[str, Any]:
    """Family factories by name, from every provider."""
    return {name: factory for p in providers() for name, factory in getattr(p, "families", {}).items()}


def family(name: str, root: Path | None = None) -> Family:
    """The family called ``name``, or the family that has a model called ``name``."""
    from gremlinkit.errors import UnknownArtefactError

    known = families()
    if name in known:
        return known[name](root)
    for factory in known.values():
        fam = factory(root)
        if name in fam.names:
            return fam
    raise UnknownArtefactError(f"no family is called {name!r} or has a model called {name!r}; "
                               f"the families: {sorted(known)}")


def card(name: str, root: Path | None = None) -> dict:
    """The card of a model that some family has (empty if no family has it or it is not built)."""
    for factory in families().values():
        fam = factory(root)
        if name in fam.names:
            return fam.member(name).card
    return {}
