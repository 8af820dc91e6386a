"""Reading model cards: one row per artefact with its headline metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from gremlinkit.providers import fit_explained_variance
from gremlinkit.zoo import registry


def card(name: str, root: Path | None = None) -> dict:
    """The model card of artefact ``name`` (empty if it has not been built)."""
    path = registry.path(name, root) / registry.CARD_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def headline(c: dict) -> dict[str, float]:
    """The few numbers ``gremlinkit zoo list`` shows for a card."""
    out = {}
    if "heldout" in c:
        h = c["heldout"]
        out.update(heldout_loss=h["loss"], unigram=h["unigram_baseline"], bigram=h["bigram_baseline"])
    if "eval" in c:
        out.update(reward=c["eval"]["reward"], base_reward=c["base_eval"]["reward"], kl_to_base=c["eval"]["kl_to_base"])
    if "truth" in c:  # a planted organism: its chain, and what it learned of it
        out.update(planted_eigenvalue=c["truth"]["eigenvalue"], planted_half_life=c["truth"]["half_life_tokens"],
                   stay_truth=c["truth"]["stay_probability"], stay_learned=c["learned"]["model"]["stay_rate"])
    if "sae_transfer" in c:
        out.update(base_sae_explained_variance=c["sae_transfer"]["explained_variance"])
    if "sae_fit" in c:  # a TRL organism: its family's SAE on held-out story text
        out.update(sae_explained_variance=fit_explained_variance(c["sae_fit"]))
    if "heldout_metrics" in c:
        m = c["heldout_metrics"]
        out.update(explained_variance=m["explained_variance"], l0=m["l0"], dead_fraction=m["dead_fraction"])
    return {k: round(v, 4) for k, v in out.items()}


def table(root: Path | None = None) -> pd.DataFrame:
    rows = []
    for name, art in registry.ARTEFACTS.items():
        c = card(name, root)
        rows.append({"artefact": name, "kind": art.kind, "built": bool(c),
                     "metrics": ", ".join(f"{k}={v}" for k, v in headline(c).items())})
    return pd.DataFrame(rows)
