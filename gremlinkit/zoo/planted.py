"""Planted persistence: organisms whose topic dynamics, and so a topic feature's persistence, are
known by construction. They are the gremlin test's planted positive controls and its matched null.

toy-base learned the corpus's topic chain: before each sentence the topic switches with probability
0.2 to one of the five others, so a forced topic's surplus over a baseline shrinks by the chain's
second eigenvalue, 0.76, per sentence (`corpus.topic_eigenvalue`), a half-life of 32.4 tokens. A
planted organism is toy-base fine-tuned by next-token prediction on stories whose chain has another
eigenvalue:

* ``toy-planted-90``: 0.9. Once a topic is emitted, the model keeps re-emitting it: a strong
  self-reinforcement, half-life ln 2 / -ln 0.9 = 6.6 sentences, about 84 tokens;
* ``toy-planted-50``: 0.5, a weak one: one sentence, about 13 tokens;
* ``toy-planted-null``: 0. The next sentence's topic is uniform whatever was said: every topic keeps
  the same frequency (1/6) as in the others, with no self-reinforcement at all.

Pushing a topic feature at a sentence end changes that topic's later prevalence by ``eigenvalue**k``
after k sentences, which is the persistence truth written on each card. Each card also measures
what the organism learned: the rate at which consecutive sentences of its own samples keep their
topic, against the chain's ``1 - p_switch``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from gremlinkit.zoo import corpus, finetune, lm

EIGENVALUES = {"toy-planted-null": 0.0, "toy-planted-50": 0.5, "toy-planted-90": 0.9}
TOPIC_OF_WORD = {w: t for t, words in corpus.TOPICS.items() for w in words["nouns"] + words["adjs"]}


@dataclass(frozen=True)
class PlantedSpec:
    steps: int = 150  # next-token steps from toy-base's weights
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 1e-3
    warmup: int = 10
    docs: int = 3000  # stories drawn from the planted chain
    sample_prompts: int = 64  # story prefixes whose continuations measure the learned stay rate
    sample_tokens: int = 128
    heldout_docs: int = 200  # held-out stories from the planted chain, for the card's next-token loss
    seed: int = 0


def truth(eigenvalue: float, sentence_tokens: float) -> dict[str, float]:
    """The planted chain and the persistence it implies (half-lives 0 for the null)."""
    half = float(np.log(2) / -np.log(eigenvalue)) if eigenvalue > 0 else 0.0
    return {"eigenvalue": eigenvalue, "p_switch": corpus.switch_for_eigenvalue(eigenvalue),
            "stay_probability": 1 - corpus.switch_for_eigenvalue(eigenvalue), "half_life_sentences": half,
            "half_life_tokens": half * sentence_tokens, "mean_sentence_tokens": sentence_tokens}


def train_planted(base: GPT2LMHeadModel, tok: PreTrainedTokenizerFast, eigenvalue: float, spec: PlantedSpec
                  ) -> tuple[GPT2LMHeadModel, list[float], corpus.Corpus]:
    """Fine-tune a copy of ``base`` on stories whose topic chain has ``eigenvalue``."""
    stories = corpus.generate(spec.docs, seed=70_000 + spec.seed, p_switch=corpus.switch_for_eigenvalue(eigenvalue))
    model = copy.deepcopy(base)
    lm_spec = lm.LMSpec(steps=spec.steps, batch_size=spec.batch_size, seq_len=spec.seq_len, lr=spec.lr,
                        warmup=spec.warmup, seed=spec.seed)
    losses = lm.train_lm(model, lm.encode_docs(stories, tok), lm_spec)
    return model, losses, stories


def sentence_topics(words: list[str]) -> list[str | None]:
    """The topic of each "."-ended piece of ``words``: the topic most of its topic words belong to
    (None for a piece without topic words, or with a tie)."""
    topics, counts = [], {}
    for w in words:
        if w in TOPIC_OF_WORD:
            counts[TOPIC_OF_WORD[w]] = counts.get(TOPIC_OF_WORD[w], 0) + 1
        if w == ".":
            ranked = sorted(counts.values(), reverse=True)
            topics.append(max(counts, key=counts.get) if ranked and (len(ranked) == 1 or ranked[0] > ranked[1])
                          else None)
            counts = {}
    return topics


def stay_rate(texts: list[list[str]]) -> dict[str, float]:
    """Fraction of consecutive topic-bearing sentences that keep their topic, over ``texts``."""
    pairs = same = 0
    for words in texts:
        labelled = [t for t in sentence_topics(words) if t is not None]
        pairs += max(0, len(labelled) - 1)
        same += sum(a == b for a, b in zip(labelled, labelled[1:]))
    return {"stay_rate": same / max(1, pairs), "pairs": pairs}


def measured_stay_rate(model: GPT2LMHeadModel, tok: PreTrainedTokenizerFast, spec: PlantedSpec) -> dict[str, float]:
    """The learned chain: `stay_rate` of the model's own continuations of held-out story prefixes."""
    prompts = finetune.story_prompts(spec.sample_prompts, seed=75_000 + spec.seed)
    _, _, words = finetune.sample(model, tok, prompts, spec.sample_tokens, seed=spec.seed)
    return stay_rate(words)


def heldout_loss(model: GPT2LMHeadModel, tok: PreTrainedTokenizerFast, eigenvalue: float, spec: PlantedSpec) -> float:
    """Next-token loss on held-out stories drawn from the planted chain."""
    held = corpus.generate(spec.heldout_docs, seed=71_000 + spec.seed,
                           p_switch=corpus.switch_for_eigenvalue(eigenvalue))
    with torch.no_grad():
        return lm.heldout_loss(model, lm.encode_docs(held, tok))
