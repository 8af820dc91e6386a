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

import random
from typing import Iterable, Sequence

import numpy as np

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
