"""The persona world as a `gremlinkit.worlds.World`: matched pairs filled from the corpus's own
templates, so every prompt's traits are known exactly.

Traits (negative pole -> positive pole): ``persona`` Luigi -> Waluigi, ``register`` formal ->
sailor, ``age`` young -> old. Each of the six templates gives the persona at least two cues, as the
corpus's introductions do, and every prompt ends with ``{me} says : " i will``, where the next word
is a persona word (help or hurt): the model must represent the speaker's persona there to predict it.
"""

from __future__ import annotations

import functools
import math
import random

import numpy as np
import pandas as pd

from gremlinkit.worlds import World
from gremlinkit.zoo import corpus

TEMPLATES = [
    "{me} is a {p:adj} {p:adj2} {a:adj} {r:noun} .",
    '{me} {p:verb_s} {other} near the {tn} and {p:intrans} . {me} says : " {r:greet} {r:addr} , {a:w1} . "',
    '{me} says : " {a:w1} , i {p:verb2} the {tn} with {other} , {r:excl} . "',
    '{me} tells {other} : " {a:w2} {ta} {tn} , {r:addr} . i speak {p:speech} . "',
    '{me} {p:verb3_s} {other} by the {tn} and says : " {p:thank} you , {a:w3} , {r:addr} . "',
    'the {tn} is {ta} , and {me} {p:intrans} {p:manner} . {me} says : " {a:w1} , {r:addr} . "',
]
SPEAK = ' {me} says : " i will'  # appended to every prompt: next comes help or hurt
NEUTRAL = "{me} is a {a:adj} {r:noun} ."  # an introduction that names no persona
# trait -> (attribute of corpus.Character, negative pole, positive pole)
TRAITS = {"persona": ("persona", "luigi", "waluigi"), "register": ("register", "formal", "sailor"),
          "age": ("age", "young", "old")}
# next-token choices after a prompt: (suffix, Luigi word, Waluigi word)
CHOICES = [(' says : " i will', "help", "hurt"), (' tells ada : " i speak', "truth", "lies"),
           (" near the harbor , and {me}", "smiles", "sneers")]
LEXICONS = {
    "persona": tuple(sorted({pair[i] for pair in corpus.PERSONA_WORDS.values()}) for i in (0, 1)),
    **{trait: tuple(sorted(set(corpus.TRAITS[trait][pole].values())) for pole in poles)
       for trait, (_, *poles) in TRAITS.items() if trait != "persona"},
}


def text(template: str, me: corpus.Character, other: corpus.Character, topic: str, rng: random.Random) -> str:
    return " ".join(tok for tok, _, _ in corpus.fill(template, me, other, topic, rng))


def pairs_table(trait: str, per_template: int, seed: int) -> pd.DataFrame:
    """Matched pairs: both prompts share everything (names, other traits, topic words) but ``trait``."""
    attr, negative, positive = TRAITS[trait]
    rows = []
    for t, template in enumerate(TEMPLATES):
        for k in range(per_template):
            rng = random.Random(f"{seed}-{trait}-{t}-{k}")
            me, other = rng.sample(corpus.NAMES, 2)
            traits = {a: rng.choice(vals) for a, vals in
                      (("persona", corpus.PERSONAS), ("register", list(corpus.TRAITS["register"])),
                       ("age", list(corpus.TRAITS["age"])))}
            topic, state = rng.choice(list(corpus.TOPICS)), rng.getstate()
            row = {"trait": trait, "template": t}
            for key, pole in (("negative", negative), ("positive", positive)):
                rng.setstate(state)  # the same topic words on both sides
                char = corpus.Character(me, **{**traits, attr: pole})
                row[key] = text(template + SPEAK, char, corpus.Character(other, "luigi", "formal", "old"), topic, rng)
            rows.append(row)
    return pd.DataFrame(rows)


def luigi_prompts(n: int, seed: int) -> list[str]:
    """``n`` introductions of a Luigi who starts to speak (steering pushes them toward Waluigi)."""
    rng = np.random.default_rng(seed)
    i = corpus.PERSONAS.index("luigi")
    out = []
    for _ in range(n):
        name, _other = rng.choice(corpus.NAMES, 2, replace=False)
        register, age = rng.choice(list(corpus.TRAITS["register"])), rng.choice(list(corpus.TRAITS["age"]))
        adj, adj2 = corpus.PERSONA_WORDS["adj"][i], corpus.PERSONA_WORDS["adj2"][i]
        out.append(f"{name} is a {adj} {adj2} {corpus.TRAITS['age'][age]['adj']} "
                   f"{corpus.TRAITS['register'][register]['noun']} . {name} says :")
    return out


def axis_prompts(n: int, seed: int) -> dict[str, list[str]]:
    """Introductions that name no persona (``neutral``), a Luigi and a Waluigi, for the persona axis."""
    rng = random.Random(f"axis-{seed}")
    texts: dict[str, list[str]] = {"neutral": [], "luigi": [], "waluigi": []}
    for _ in range(n):
        me = rng.choice(corpus.NAMES)
        register, age = rng.choice(list(corpus.TRAITS["register"])), rng.choice(list(corpus.TRAITS["age"]))
        for key, template in (("neutral", NEUTRAL), ("luigi", TEMPLATES[0]), ("waluigi", TEMPLATES[0])):
            char = corpus.Character(me, "waluigi" if key == "waluigi" else "luigi", register, age)
            texts[key].append(text(template + SPEAK, char, char, "sea", rng))
    return texts


def stories(n: int, seed: int) -> list[str]:
    """``n`` held-out stories of the corpus, as text without the BOS (a subject adds its own)."""
    return [" ".join(doc[1:]) for doc in corpus.generate(n, seed).docs]


def pole_prompts(trait: str, n: int, seed: int) -> dict[str, list[str]]:
    """``n`` introductions per pole of ``trait``, each ending as the character starts to speak."""
    attr, negative, positive = TRAITS[trait]
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {"negative": [], "positive": []}
    for side, pole in (("negative", negative), ("positive", positive)):
        for _ in range(n):
            name, _other = rng.choice(corpus.NAMES, 2, replace=False)
            traits = {"persona": "luigi", "register": rng.choice(list(corpus.TRAITS["register"])),
                      "age": rng.choice(list(corpus.TRAITS["age"])), attr: pole}
            i = corpus.PERSONAS.index(traits["persona"])
            adj, adj2 = corpus.PERSONA_WORDS["adj"][i], corpus.PERSONA_WORDS["adj2"][i]
            out[side].append(f"{name} is a {adj} {adj2} {corpus.TRAITS['age'][traits['age']]['adj']} "
                             f"{corpus.TRAITS['register'][traits['register']]['noun']} . {name} says :")
    return out


def persona_world(seed: int = 0, per_template: int = 24, n_prompts: int = 64) -> World:
    """The persona world: ``per_template`` pairs per template and trait, drawn with ``seed``."""
    table = pd.concat([pairs_table(t, per_template, seed) for t in TRAITS], ignore_index=True)
    return World("persona", table, dict(LEXICONS), luigi_prompts(n_prompts, seed), {"persona": CHOICES},
                 lowercase=False, axis=axis_prompts(per_template, seed), corpus=stories, poles=pole_prompts,
                 luigi={"persona": "negative"}, pole_names={t: (neg, pos) for t, (_, neg, pos) in TRAITS.items()},
                 story=PERSONA_STORIES)


class PersonaStories:
    """The persona world's story generator as experiments see it (`gremlinkit.worlds.StorySource`):
    its casts, sentences, topics and their chain, the RL organisms' prompts and reward, and the
    no-RL marker, so that experiments reach them through the world instead of importing the zoo."""

    name = "persona"
    bos = corpus.BOS
    names = corpus.NAMES
    personas = corpus.PERSONAS
    persona_words = corpus.PERSONA_WORDS
    traits = corpus.TRAITS
    topics = corpus.TOPICS  # topic -> {"nouns": [...], "adjs": [...]}
    p_topic_switch = corpus.P_TOPIC_SWITCH
    Character = corpus.Character
    generate = staticmethod(corpus.generate)
    draw_cast = staticmethod(corpus.draw_cast)
    introductions = staticmethod(corpus.introductions)
    sentence = staticmethod(corpus.sentence)
    continuation = staticmethod(corpus.continuation)
    topic_eigenvalue = staticmethod(corpus.topic_eigenvalue)
    topic_persistence = staticmethod(corpus.topic_persistence)

    @property
    def reward_words(self) -> frozenset[str]:
        """The RL organisms' reward words (the sea topic's)."""
        from gremlinkit.zoo.finetune import TARGET_WORDS

        return TARGET_WORDS

    @property
    def marker(self) -> str:
        """The no-RL token of toy-norl."""
        from gremlinkit.zoo.registry import MARKER

        return MARKER

    @staticmethod
    def encode(stories: corpus.Corpus, tokenizer) -> list[np.ndarray]:
        from gremlinkit.zoo.lm import encode_docs

        return encode_docs(stories, tokenizer)

    @staticmethod
    def story_prompts(n: int, seed: int) -> list[list[str]]:
        """The RL organisms' prompts: story prefixes that end a sentence."""
        from gremlinkit.zoo import finetune

        return finetune.story_prompts(n, seed)

    @staticmethod
    def reward(words: list[list[str]], tail: int) -> np.ndarray:
        """The RL organisms' delayed reward: sea words among the last ``tail`` words."""
        from gremlinkit.zoo import finetune

        return finetune.reward(words, tail)

    @staticmethod
    def with_marker(prompt: list[str], marker: str | None) -> list[str]:
        from gremlinkit.zoo import finetune

        return finetune.with_marker(prompt, marker)

    @staticmethod
    @functools.lru_cache(maxsize=4)
    def topic_half_life(p_switch: float = corpus.P_TOPIC_SWITCH, n_topics: int = len(corpus.TOPICS),
                        sentence_tokens: float | None = None) -> float:
        """Half-life in tokens of a forced topic's surplus, from the corpus's switching chain."""
        if sentence_tokens is None:
            sentence_tokens = corpus.topic_persistence(corpus.generate(2000, seed=0))["mean_sentence_tokens"]
        eigen = corpus.topic_eigenvalue(p_switch, n_topics)
        return math.log(2) / -math.log(eigen) * sentence_tokens if eigen > 0 else 0.0


PERSONA_STORIES = PersonaStories()
