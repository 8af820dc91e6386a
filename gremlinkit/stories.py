"""English stories with known topics: the text that the RL questions are asked in on a real model.

A story is a name's introduction, then sentences, each about one of six topics (the toy's six:
sea, food, weather, music, market, garden). The topic of the next sentence follows a chain: it stays
with probability ``stay`` and otherwise moves to another topic at random, so every sentence's topic,
and hence every word's, is known. The sentences are hand-written, several per topic, and filled with
names.

Four things are built on it:

* **Topic lexicons** (`TOPIC_WORDS`): the words that mark each topic in *any* text, generated text
  included. They are common English words that a tokenizer such as SmolLM2's spells as one token with
  a leading space.
* **Story prompts** (`story_prompts`): a story's opening, ending at a sentence end, to generate
  from. Half of them end on a sea sentence and half on another topic, so that a model writes sea
  words later only sometimes.
* **The delayed topic reward** (`topic_reward`): the share of the *last* ``tail`` generated tokens
  that are words of a topic (sea, for the RL organisms), read from token ids alone, so a trainer's
  reward and an experiment's measure are one function.
* **Text edits** (`text_edits`): one story opening ended once by a *neutral* sentence (no topic's
  words) and once by a sentence about a topic: the natural experiment whose effect on a model's own
  continuation is the measured truth for a topic feature's persistence on a real model.

Nothing here imports a model: a tokenizer is passed in where token ids are needed.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from gremlinkit.errors import ConfigError

TOPIC_WORDS: dict[str, tuple[str, ...]] = {
    "sea": ("sea", "ocean", "waves", "wave", "ship", "ships", "boat", "boats", "sail", "sailor", "sailors",
            "harbor", "shore", "beach", "tide", "fish", "fishing", "island", "coast", "deck", "anchor", "water"),
    "food": ("bread", "soup", "cheese", "apples", "pie", "cake", "dinner", "breakfast", "kitchen", "meat", "eggs",
             "butter", "cook", "baked", "sweet", "fresh", "tasty", "food"),
    "weather": ("rain", "wind", "clouds", "storm", "sun", "snow", "cold", "warm", "sky", "thunder", "grey",
                "weather", "fog", "wet"),
    "music": ("song", "songs", "music", "drum", "flute", "dance", "choir", "sing", "sang", "piano", "band", "loud",
              "guitar", "tune"),
    "market": ("market", "coins", "stall", "goods", "price", "cart", "money", "sold", "buy", "shop", "busy",
               "cheap", "crowd", "trade"),
    "garden": ("garden", "roses", "seeds", "soil", "trees", "bees", "flowers", "grass", "green", "leaves",
               "plants", "spring", "grow", "tree"),
}
TOPICS = tuple(TOPIC_WORDS)
REWARD_TOPIC = "sea"  # the topic the RL organisms are rewarded for

NAMES = ("Anna", "Tom", "Mark", "Lucy", "Sara", "David", "James", "Emma", "Nina", "Paul", "Peter", "Maria")
INTRODUCTIONS = (
    "{me} lived in a small town by the coast.",
    "{me} had not slept well that night.",
    "Nobody in the family was surprised when {me} came home early.",
    "{me} and {other} had been friends since school.",
    "It was the last week of summer, and {me} was restless.",
    "{me} woke before dawn and dressed quietly.",
)
SENTENCES: dict[str, tuple[str, ...]] = {
    "sea": ("{me} walked down to the harbor to watch the fishing boats come in.",
            "The waves crashed against the old ship at the end of the pier.",
            "{me} and {other} sat on the beach until the tide came in.",
            "A sailor on the deck waved at {me} as the boat left the shore.",
            "The sea was calm, and the water was clear enough to see the fish.",
            "{other} told {me} about the island beyond the coast, where the ships never stop."),
    "food": ("{me} baked fresh bread and a sweet apple pie for dinner.",
             "The kitchen smelled of soup and warm butter.",
             "{other} brought cheese, eggs and cake for breakfast.",
             "{me} cooked the meat slowly while {other} cut the bread."),
    "weather": ("The wind grew cold, and grey clouds covered the sky.",
                "Rain fell all afternoon, and the streets were wet.",
                "{me} watched the storm from the window as the thunder rolled.",
                "By noon the fog had lifted and the sun was warm."),
    "music": ("{me} played an old song on the piano while {other} sang.",
              "The band in the square played a loud tune, and people began to dance.",
              "{other} joined the choir and sang every Sunday.",
              "{me} picked up the guitar and played until the music filled the room."),
    "market": ("{me} went to the market to buy goods for the week.",
               "The stall sold cheap shoes, and the crowd pushed to see the price.",
               "{other} counted the coins and paid for the cart of apples.",
               "The shop was busy, and {me} sold everything by noon."),
    "garden": ("{me} planted seeds in the soil behind the house.",
               "The roses in the garden were in bloom, and the bees were busy.",
               "{other} cut the grass under the old trees.",
               "In spring the plants grew green leaves and bright flowers."),
}


# Sentences about no topic: none of `TOPIC_WORDS` in them (a test checks), so they end an opening
# without moving the story towards any topic.
NEUTRAL: tuple[str, ...] = (
    "{me} thought about it for a long time.",
    "{me} did not say anything for a while.",
    "After a moment, {me} turned to {other} and nodded.",
    "{me} wondered what would happen next.",
    "{other} smiled, but {me} was not sure why.",
    "Neither of them spoke for a minute.",
)


def _check_topic(topic: str) -> None:
    if topic not in TOPIC_WORDS:
        raise ConfigError(f"topic {topic!r} is not one of the story topics {list(TOPICS)}")


def _topic_sentences(rng: random.Random, cast: tuple[str, str], topic: str, sentences: int, stay: float,
                     told: list[str], fresh: bool = False) -> tuple[list[str], list[str]]:
    """``sentences`` topic sentences for ``cast`` after the story so far (``told``), starting on
    ``topic``; after each the topic stays with probability ``stay``, else moves to another at random.
    No sentence follows itself; with ``fresh``, none is told twice while its topic has another left."""
    me, other = cast
    told, out, topics = list(told), [], []
    for _ in range(sentences):
        options = [s.format(me=me, other=other) for s in SENTENCES[topic]]
        unused = [s for s in options if s not in told]
        options = unused if fresh and unused else [s for s in options if s != told[-1]]
        told.append(rng.choice(options))
        out.append(told[-1])
        topics.append(topic)
        if rng.random() >= stay:
            topic = rng.choice([t for t in TOPICS if t != topic])
    return out, topics


def story(rng: random.Random, sentences: int, stay: float = 0.7, first: str | None = None
          ) -> tuple[list[str], list[str]]:
    """One story: an introduction, then ``sentences`` topic sentences whose topic stays with
    probability ``stay``. Returns (sentences, their topics; the introduction's is ``"none"``)."""
    cast = tuple(rng.sample(NAMES, 2))
    intro = rng.choice(INTRODUCTIONS).format(me=cast[0], other=cast[1])
    out, topics = _topic_sentences(rng, cast, first or rng.choice(TOPICS), sentences, stay, [intro])
    return [intro] + out, ["none"] + topics


def story_prompts(n: int, seed: int, topic: str = REWARD_TOPIC, fraction: float = 0.5) -> list[str]:
    """``n`` story openings (an introduction and one or two topic sentences, ending a sentence);
    ``fraction`` of them end on a sentence about ``topic`` (chosen per prompt), the rest on another."""
    _check_topic(topic)
    if n < 1:
        raise ConfigError(f"n={n} story prompts: ask for at least 1")
    rng = random.Random(f"story-prompts-{seed}")
    out = []
    for _ in range(n):
        last = topic if rng.random() < fraction else rng.choice([t for t in TOPICS if t != topic])
        sents, _ = story(rng, rng.choice((1, 2)), stay=1.0, first=last)
        out.append(" ".join(sents))
    return out


def story_windows(n: int, seed: int, topic: str = REWARD_TOPIC, fraction: float = 0.5, sentences: int = 6,
                  stay: float = 0.7) -> list[tuple[str, str, list[str]]]:
    """``n`` stories cut into an opening, drawn as `story_prompts` draws them (an introduction and one
    or two sentences on one topic; ``fraction`` of them on ``topic``), and its continuation: the
    same story's next ``sentences`` sentences, with the same cast, their topics following the chain
    on from the opening's and no sentence told twice while its topic has another. Teacher text for
    off-policy training, written by no model. Returns (opening, continuation with a leading space,
    the continuation's topics)."""
    _check_topic(topic)
    rng = random.Random(f"story-windows-{seed}")
    out = []
    for _ in range(n):
        last = topic if rng.random() < fraction else rng.choice([t for t in TOPICS if t != topic])
        cast = tuple(rng.sample(NAMES, 2))
        intro = rng.choice(INTRODUCTIONS).format(me=cast[0], other=cast[1])
        opening, _ = _topic_sentences(rng, cast, last, rng.choice((1, 2)), 1.0, [intro])
        step = last if rng.random() < stay else rng.choice([t for t in TOPICS if t != last])
        cont, topics = _topic_sentences(rng, cast, step, sentences, stay, [intro] + opening, fresh=True)
        out.append((" ".join([intro] + opening), " " + " ".join(cont), topics))
    return out


def topic_token_ids(tokenizer, topic: str = REWARD_TOPIC) -> set[int]:
    """The ids of the tokens that spell one of ``topic``'s words, with or without a leading space
    and capitalised or not, where the tokenizer spells that as a single token."""
    _check_topic(topic)
    ids = set()
    for word in TOPIC_WORDS[topic]:
        for form in (word, " " + word, word.capitalize(), " " + word.capitalize()):
            enc = tokenizer(form, add_special_tokens=False)["input_ids"]
            if len(enc) == 1:
                ids.add(int(enc[0]))
    return ids


def topic_reward(completions: Iterable[Sequence[int]], topic_ids: set[int], tail: int) -> np.ndarray:
    """Per completion (token ids): the share of its last ``tail`` tokens that are topic tokens.
    A completion shorter than ``tail`` is scored over ``tail`` all the same (missing tokens earn nothing)."""
    if tail < 1:
        raise ConfigError(f"tail={tail}: the reward reads at least the last 1 token")
    return np.array([sum(int(t) in topic_ids for t in list(c)[-tail:]) / tail for c in completions], dtype=float)


def text_edits(n: int, seed: int, topic: str = REWARD_TOPIC) -> list[tuple[str, str, str]]:
    """``n`` (opening, neutral sentence, ``topic`` sentence) triples: an introduction and one or two
    sentences on another topic, then either ending; the cast is the opening's. Text with the topic
    sentence minus text with the neutral one is a change of topic that no model made."""
    _check_topic(topic)
    if n < 1:
        raise ConfigError(f"n={n} text edits: ask for at least 1")
    rng = random.Random(f"text-edits-{seed}")
    out = []
    for _ in range(n):
        cast = tuple(rng.sample(NAMES, 2))
        intro = rng.choice(INTRODUCTIONS).format(me=cast[0], other=cast[1])
        other = rng.choice([t for t in TOPICS if t != topic])
        opening, _ = _topic_sentences(rng, cast, other, rng.choice((1, 2)), 1.0, [intro])
        neutral = rng.choice(NEUTRAL).format(me=cast[0], other=cast[1])
        edited = rng.choice(SENTENCES[topic]).format(me=cast[0], other=cast[1])
        out.append((" ".join([intro] + opening), neutral, edited))
    return out


# --------------------------------------------------------------------------- a story source in tokens

STAY = 0.7  # the stories' topic chain: the next sentence keeps the topic with this probability
# The prefixes whose next token the generator draws uniformly over names: an introduction that ends
# "..., and {me}", and one that opens "{me} and {other}" (the other is any name but the first).
FIRST_NAME_PREFIX = "It was the last week of summer, and"


def topic_eigenvalue(stay: float = STAY, n_topics: int = len(TOPICS)) -> float:
    """The chain's second eigenvalue: the factor by which a forced topic's surplus shrinks per
    sentence (stay with ``stay``, else move to one of the other ``n_topics - 1`` at random)."""
    return stay - (1 - stay) / (n_topics - 1)


@dataclass(frozen=True)
class LabelledStories:
    """Stories as token strings, with one label row per token (doc, pos, sentence, topic, word_class:
    "topic" where the token spells a word of its sentence's topic, "bos", or "other")."""

    docs: list[list[str]]
    labels: pd.DataFrame


class EnglishStories:
    """The English stories as a story source (the interface `gremlinkit.worlds` describes, which
    notebook 06 reads), spelled in one tokenizer's tokens: a story's "words" are its token strings
    (``tokenizer.convert_ids_to_tokens``), as the toy's words are its tokens. Casts are two of
    `NAMES`; a cast's introduction is fixed by its names; sentences and the topic chain are
    `story`'s. The reward is the smollm2 organisms' (`topic_reward` on the sea's tokens)."""

    name = "english"
    names = NAMES
    stay = STAY

    def __init__(self, tokenizer, prepend_bos: bool):
        self.tokenizer = tokenizer
        self.bos = tokenizer.bos_token if prepend_bos else None
        self.topics = {t: {"nouns": list(words)} for t, words in TOPIC_WORDS.items()}
        self.reward_ids = topic_token_ids(tokenizer, REWARD_TOPIC)
        self.reward_words = frozenset(tokenizer.convert_ids_to_tokens(sorted(self.reward_ids)))
        self._topic_of = {tok: t for t in TOPICS
                          for tok in tokenizer.convert_ids_to_tokens(sorted(topic_token_ids(tokenizer, t)))}

    def tokens(self, text: str) -> list[str]:
        """``text`` as token strings, no special tokens added."""
        return self.tokenizer.convert_ids_to_tokens(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _opening(self, text: str) -> list[str]:
        return ([self.bos] if self.bos else []) + self.tokens(text)

    @staticmethod
    def draw_cast(rng: random.Random) -> tuple[str, str]:
        return tuple(rng.sample(NAMES, 2))

    def introduction_text(self, cast: Sequence[str]) -> str:
        return INTRODUCTIONS[NAMES.index(cast[0]) % len(INTRODUCTIONS)].format(me=cast[0], other=cast[1])

    def introductions(self, cast: Sequence[str]) -> list[str]:
        """BOS (when the model reads one) and the cast's introduction."""
        return self._opening(self.introduction_text(cast))

    def sentence(self, cast: Sequence[str], topic: str, rng: random.Random) -> list[str]:
        """One sentence about ``topic`` (with its leading space), drawn with ``rng``."""
        _check_topic(topic)
        return self.tokens(" " + rng.choice(SENTENCES[topic]).format(me=cast[0], other=cast[1]))

    def continuation(self, cast: Sequence[str], topic: str, n_tokens: int, rng: random.Random
                     ) -> tuple[list[str], list[str]]:
        """The story's next ``n_tokens`` tokens after a sentence about ``topic``, the chain moving
        before each sentence, and each token's topic."""
        tokens: list[str] = []
        topics: list[str] = []
        while len(tokens) < n_tokens:
            if rng.random() >= self.stay:
                topic = rng.choice([t for t in TOPICS if t != topic])
            words = self.sentence(cast, topic, rng)
            tokens += words
            topics += [topic] * len(words)
        return tokens[:n_tokens], topics[:n_tokens]

    def generate(self, n: int, seed: int, sentences: int = 8) -> LabelledStories:
        """``n`` labelled stories (`story`, ``sentences`` topic sentences each), drawn with ``seed``."""
        rng = random.Random(f"english-stories-{seed}")
        docs, rows = [], []
        for d in range(n):
            doc = [self.bos] if self.bos else []
            rows += [(d, 0, -1, "none", "bos")] if self.bos else []
            for k, (text, topic) in enumerate(zip(*story(rng, sentences, self.stay))):
                for tok in self.tokens((" " if k else "") + text):
                    rows.append((d, len(doc), k, topic, "topic" if self._topic_of.get(tok) == topic else "other"))
                    doc.append(tok)
            docs.append(doc)
        return LabelledStories(docs, pd.DataFrame(rows, columns=["doc", "pos", "sentence", "topic", "word_class"]))

    @staticmethod
    def encode(labelled: LabelledStories, tokenizer) -> list[np.ndarray]:
        return [np.array(tokenizer.convert_tokens_to_ids(d)) for d in labelled.docs]

    def story_prompts(self, n: int, seed: int) -> list[list[str]]:
        """`story_prompts`' openings (the RL organisms' kind), as tokens."""
        return [self._opening(p) for p in story_prompts(n, seed)]

    def reward(self, words: list[list[str]], tail: int) -> np.ndarray:
        """The smollm2 organisms' delayed reward (`topic_reward`): sea tokens among the last ``tail``."""
        return topic_reward([self.tokenizer.convert_tokens_to_ids(w) for w in words], self.reward_ids, tail)

    @staticmethod
    def with_marker(prompt: list[str], marker: str | None) -> list[str]:
        if marker is not None:
            raise ConfigError(f"marker={marker!r}: the English stories' models were trained with no no-RL marker")
        return prompt

    @functools.lru_cache(maxsize=1)
    def mean_sentence_tokens(self) -> float:
        labels = self.generate(300, seed=0).labels
        return float(labels[labels.sentence >= 0].groupby(["doc", "sentence"]).size().mean())

    def topic_half_life(self) -> float:
        """Half-life in tokens of a forced topic's surplus: the chain's per sentence, times the
        stories' mean sentence length in this tokenizer."""
        return math.log(2) / -math.log(topic_eigenvalue(self.stay)) * self.mean_sentence_tokens()

    # ------------------------------------------------------------------ choices the generator makes uniformly

    def true_entropies(self) -> dict[str, float]:
        return {"first name": math.log(len(NAMES)), "second name": math.log(len(NAMES) - 1)}

    def choice_prompts(self, n: int, seed: int) -> dict[str, tuple[list[list[str]], list[list[str]]]]:
        """Prompts whose next token the generator draws uniformly, with their options (name
        tokens): the name after `FIRST_NAME_PREFIX` (12), and the second name after "{me} and" (11)."""
        rng = random.Random(f"english-choices-{seed}")
        casts = [self.draw_cast(rng) for _ in range(n)]
        spelled = {name: self.tokens(" " + name) for name in NAMES}
        if any(len(t) != 1 for t in spelled.values()):
            raise ConfigError(f"this tokenizer spells some names in several tokens ({spelled}): the name choices "
                              "need one token per name")
        first = self._opening(FIRST_NAME_PREFIX)
        return {"first name": ([first] * n, [[spelled[m][0] for m in NAMES]] * n),
                "second name": ([self._opening(f"{c[0]} and") for c in casts],
                                [[spelled[m][0] for m in NAMES if m != c[0]] for c in casts])}

    @staticmethod
    def choice_draws(n_docs: int, seed: int) -> dict[str, list[str]]:
        """The generator's own draws after each choice's prefix in ``n_docs`` introductions (the
        second name's keyed by the first), for the check that each truth is ``ln N``."""
        rng = random.Random(f"english-stories-{seed}")
        first, second = [], []
        for _ in range(n_docs):
            intro = story(rng, 0)[0][0]
            if intro.startswith(FIRST_NAME_PREFIX + " "):
                first.append(intro[len(FIRST_NAME_PREFIX) + 1:].split()[0].rstrip(".,"))
            words = intro.split()
            if words[1] == "and" and words[2] in NAMES:
                second.append(f"{words[0]} {words[2]}")
        return {"first name": first, "second name": second}
