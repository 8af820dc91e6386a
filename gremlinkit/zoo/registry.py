"""The zoo's artefact table: one row per artefact, read by the build, the loader and the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ARTEFACT_DIR = Path(__file__).parent / "artefacts"
CARD_FILE = "card.json"


@dataclass(frozen=True)
class Artefact:
    name: str
    kind: str  # "model" (an HF model directory) or "sae" (a sae_lens directory)
    description: str
    parent: str | None = None  # the model an SAE reads from
    default_sae: str | None = None  # the SAE a model loads with by default


ARTEFACTS: dict[str, Artefact] = {
    a.name: a
    for a in [
        Artefact("toy-base", "model", "GPT-2-architecture LM trained by next-token prediction on the persona world.",
                 default_sae="toy-base-sae"),
        Artefact("toy-base-sae", "sae", "TopK SAE on toy-base's middle residual stream, trained with sae_lens.",
                 parent="toy-base"),
        Artefact("toy-rl", "model", "toy-base after on-policy RL (group-relative REINFORCE, KL to base) on a "
                 "delayed reward: sea-topic words in the last 16 of 48 generated tokens.",
                 parent="toy-base", default_sae="toy-base-sae"),
        Artefact("toy-sft", "model", "toy-base fine-tuned off-policy on corpus continuations that earn toy-rl's "
                 "reward; same steps, rows and tokens as toy-rl.", parent="toy-base", default_sae="toy-base-sae"),
    ]
}


def path(name: str, root: Path | None = None) -> Path:
    """The directory of artefact ``name`` under ``root`` (the shipped artefacts by default)."""
    from gremlinkit.errors import UnknownArtefactError

    if name not in ARTEFACTS:
        raise UnknownArtefactError(f"unknown zoo artefact {name!r}: the zoo has {sorted(ARTEFACTS)}")
    return (root or ARTEFACT_DIR) / name


# What a loader needs in each kind of directory (HF model, sae_lens SAE), plus the model card.
REQUIRED_FILES = {
    "model": ("config.json", "model.safetensors", "tokenizer.json", CARD_FILE),
    "sae": ("cfg.json", "sae_weights.safetensors", CARD_FILE),
}


def missing_files(root: Path | None = None) -> list[Path]:
    """Every required artefact file absent under ``root`` (the shipped zoo by default)."""
    return [path(a.name, root) / f for a in ARTEFACTS.values() for f in REQUIRED_FILES[a.kind]
            if not (path(a.name, root) / f).is_file()]
