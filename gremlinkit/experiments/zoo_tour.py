"""Zoo tour: what the toy model says in each persona's voice, and what its SAE features track.

The claim under test is modest: a small model trained on the persona world *simulates* the
personas it has seen. Prompted with a Luigi character it should speak the Luigi lexicon, with a
Waluigi character the Waluigi lexicon, and its SAE features should line up with the corpus's
ground-truth labels (topics, personas, registers). Both are scored against the generator's
lexicon and labels, not by eye.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from gremlinkit import worlds
from gremlinkit.results import Result, to_numpy
from gremlinkit.params import Placement, check_range

LABELS = ["topic", "persona", "register", "age", "word_class"]


@dataclass(frozen=True)
class ZooTourConfig(Placement):
    model: str = "toy-base"  # zoo name or local model directory
    n_prompts: int = 8  # prompts per persona
    max_new_tokens: int = 48  # tokens generated per prompt
    temperature: float = 1.0  # sampling temperature; 0 is greedy
    n_docs: int = 200  # held-out stories for feature statistics
    n_features: int = 6  # features listed, the most frequent first
    top_tokens: int = 8  # top-activating tokens listed per feature
    seed: int = 0  # seeds prompts, sampling noise and the held-out corpus
    output_dir: str = "output/00_zoo_tour"  # where metrics and tables are written

    def __post_init__(self) -> None:
        check_range("n_prompts", self.n_prompts, 1, 256)
        check_range("max_new_tokens", self.max_new_tokens, 1, 128)
        check_range("temperature", self.temperature, 0, 10)
        check_range("n_docs", self.n_docs, 1, 5000)
        check_range("n_features", self.n_features, 1, 64)
        check_range("top_tokens", self.top_tokens, 1, 50)

    @classmethod
    def smoke(cls) -> "ZooTourConfig":
        return cls(n_prompts=4, max_new_tokens=24, n_docs=40, n_features=3, top_tokens=5)


def persona_lexicon(story=None) -> dict[str, set[str]]:
    """Each persona's words (the persona world's antonym pairs, one side each)."""
    story = story or worlds.story("persona")
    return {p: {pair[i] for pair in story.persona_words.values()} for i, p in enumerate(story.personas)}


def persona_prompts(n: int, seed: int, story=None) -> pd.DataFrame:
    """``n`` prompts per persona: a character is introduced, then starts to speak."""
    story = story or worlds.story("persona")
    rng = np.random.default_rng(seed)
    rows = []
    for persona in story.personas:
        i = story.personas.index(persona)
        for k in range(n):
            name, other = rng.choice(story.names, 2, replace=False)
            register, age = rng.choice(list(story.traits["register"])), rng.choice(list(story.traits["age"]))
            adj, adj2 = story.persona_words["adj"][i], story.persona_words["adj2"][i]
            text = (f"{name} is a {adj} {adj2} {story.traits['age'][age]['adj']} "
                    f"{story.traits['register'][register]['noun']} . {name} says :")
            rows.append({"prompt_id": len(rows), "persona": persona, "register": register, "age": age,
                         "prompt": text})
    return pd.DataFrame(rows)


def lexicon_rates(text: str, lexicon: dict[str, set[str]] | None = None) -> dict[str, float]:
    """Fraction of words in ``text`` from each persona's lexicon (`persona_lexicon`)."""
    words = text.split()
    n = max(1, len(words))
    return {f"{p}_rate": sum(w in lex for w in words) / n for p, lex in (lexicon or persona_lexicon()).items()}


def samples(subject, cfg: ZooTourConfig) -> pd.DataFrame:
    """One row per prompt: the continuation and its persona-lexicon rates."""
    story = worlds.story("persona")  # the tour reads the persona world, whatever model it is given
    prompts = persona_prompts(cfg.n_prompts, cfg.seed, story)
    # One noise stream per prompt: rows are independent samples, and each is reproducible.
    seeds = [cfg.seed * 100_003 + i for i in range(len(prompts))]
    gen = subject.generate(prompts.prompt.tolist(), cfg.max_new_tokens, seed=seeds, temperature=cfg.temperature)
    lexicon = persona_lexicon(story)
    rates = pd.DataFrame([lexicon_rates(t, lexicon) for t in gen.text])
    return pd.concat([prompts.assign(continuation=gen.text), rates], axis=1)


def heldout_corpus(n_docs: int, seed: int, story=None):
    """Stories the zoo never trained on: the build draws its corpora with seeds 0, 1 and 100, and
    fine-tuning prompts from 50,000 and 60,000."""
    return (story or worlds.story("persona")).generate(n_docs, seed=10_000 + seed)


def corpus_features(subject, held, story=None) -> tuple[pd.DataFrame, torch.Tensor]:
    """Token labels of the labelled stories ``held`` (BOS dropped) and the SAE features at those
    tokens (N, d_sae)."""
    ids = (story or worlds.story("persona")).encode(held, subject.tokenizer)
    feats = subject.features(ids)  # (B, T, d_sae), prompt indexing
    keep = subject.batch(ids).prompt_mask(skip_bos=True)  # row-major: doc by doc, as the labels are
    labels = held.labels[held.labels.pos > 0].reset_index(drop=True)
    return labels, feats[keep]


def heldout_features(subject, cfg: ZooTourConfig) -> tuple[pd.DataFrame, torch.Tensor]:
    """Labels and SAE features of ``cfg.n_docs`` held-out stories."""
    story = worlds.story("persona")  # the tour reads the persona world, whatever model it is given
    return corpus_features(subject, heldout_corpus(cfg.n_docs, cfg.seed, story), story)


def feature_summary(labels: pd.DataFrame, feats: torch.Tensor) -> pd.DataFrame:
    """Per feature: firing frequency and the ground-truth label value it fires on most purely."""
    active = to_numpy(feats > 0)
    freq = active.mean(0)
    rows = []
    for f in np.flatnonzero(freq > 0):
        on = labels[active[:, f]]
        best = max(((col, *_purity(on[col])) for col in LABELS), key=lambda t: t[2])
        rows.append({"feature": int(f), "frequency": float(freq[f]), "label": best[0],
                     "label_value": best[1], "purity": best[2]})
    return pd.DataFrame(rows).sort_values(["frequency", "feature"], ascending=[False, True], ignore_index=True)


def _purity(values: pd.Series) -> tuple[str, float]:
    counts = values[values != ""].value_counts()
    if counts.empty:
        return "", 0.0
    return str(counts.index[0]), float(counts.iloc[0] / len(values))


def top_tokens(labels: pd.DataFrame, feats: torch.Tensor, features: list[int], k: int) -> pd.DataFrame:
    """Long table: for each feature, its ``k`` tokens with the highest mean activation when it fires."""
    rows = []
    for f in features:
        acts = to_numpy(feats[:, f])
        on = labels.assign(act=acts)[acts > 0]
        agg = on.groupby("token").act.agg(["mean", "size"]).sort_values("mean", ascending=False).head(k)
        rows += [{"feature": f, "rank": r, "token": tok, "mean_activation": float(m), "count": int(c)}
                 for r, (tok, (m, c)) in enumerate(agg.iterrows())]
    return pd.DataFrame(rows)


def metrics(sample_df: pd.DataFrame, summary: pd.DataFrame, subject) -> dict[str, float]:
    by = sample_df.groupby("persona")[["luigi_rate", "waluigi_rate"]].mean()
    return {
        "luigi_prompts_luigi_rate": by.loc["luigi", "luigi_rate"],
        "luigi_prompts_waluigi_rate": by.loc["luigi", "waluigi_rate"],
        "waluigi_prompts_waluigi_rate": by.loc["waluigi", "waluigi_rate"],
        "waluigi_prompts_luigi_rate": by.loc["waluigi", "luigi_rate"],
        "live_features": float(len(summary)),
        "live_fraction": len(summary) / subject.d_sae,
        "mean_feature_purity": float(summary.purity.mean()),
    }


@dataclass
class ZooTourResult(Result):
    samples: pd.DataFrame  # one row per prompt: persona, prompt, continuation, lexicon rates
    features: pd.DataFrame  # `feature_summary`: one row per live feature
    top_tokens: pd.DataFrame  # `top_tokens` of the ``n_features`` most frequent features
    metrics: dict = field(default_factory=dict)


def run(cfg: ZooTourConfig, subject=None) -> ZooTourResult:
    """The tour: samples per persona, the SAE's live features against the corpus labels, and the
    top tokens of the most frequent ones."""
    from gremlinkit import load

    subject = subject or load(cfg.model, **cfg.load_kwargs())
    sample_df = samples(subject, cfg)
    labels, feats = heldout_features(subject, cfg)
    summary = feature_summary(labels, feats)
    top = top_tokens(labels, feats, summary.feature.head(cfg.n_features).tolist(), cfg.top_tokens)
    return ZooTourResult(sample_df, summary, top, metrics(sample_df, summary, subject))
