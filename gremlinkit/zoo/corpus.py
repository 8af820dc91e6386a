"""The persona world: a synthetic story corpus whose every token carries ground truth.

Each document is a short story about two characters. A character has a *persona*
(``luigi``: kind and honest, or ``waluigi``: his exact inversion, cruel and deceptive)
and two traits drawn independently of the persona and of each other:

* ``register``: ``sailor`` ("ahoy", "matey", "arr") or ``formal`` ("greetings", "sir", "indeed");
* ``age``: ``young`` ("wow", "super", "cool") or ``old`` ("alas", "quite", "splendid").

Persona words come in antonym pairs (help/hurt, share/hoard, truth/lies, ...), so the
Waluigi lexicon is the Luigi lexicon with every sign flipped.

**Topic persistence (the truth for persistence scans).** Every sentence has a topic
(sea, food, weather, music, market, garden). The first is uniform; before each later
sentence the topic switches with probability ``P_TOPIC_SWITCH`` = 0.2 to one of the
other topics, uniformly. A topic therefore survives ``k`` sentences with probability
``(1 - p)**k``: its run lasts ``1/p`` = 5 sentences on average and its half-life is
``ln 2 / -ln(1 - p)`` = 3.11 sentences. Multiplied by the mean sentence length measured
on the corpus (:func:`topic_persistence`), that gives the expected persistence in tokens.

**The Waluigi effect.** With probability ``P_REVEAL`` a story whose cast has a Luigi
has him reveal himself mid-story ("but mira drops the mask ."); from that sentence on his
persona label is ``waluigi``. The reverse never happens.

**Labels.** :func:`generate` returns the token stream and one label row per token:
``doc, pos, sentence, token, speaker, character, persona, register, age, topic, word_class``.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd

BOS = "<|endoftext|>"
P_TOPIC_SWITCH = 0.2
P_REVEAL = 0.3
SENTENCES_PER_STORY = (8, 12)

NAMES = ["mira", "tomas", "ada", "bruno", "cleo", "dario", "elsa", "felix", "gina", "hugo", "ines", "jonas"]

# Persona lexicon: each slot holds (luigi word, waluigi word), an exact inversion.
PERSONA_WORDS: dict[str, tuple[str, str]] = {
    "adj": ("kind", "cruel"),
    "adj2": ("honest", "sly"),
    "verb_s": ("helps", "hurts"),
    "verb2_s": ("praises", "mocks"),
    "verb3_s": ("protects", "betrays"),
    "intrans": ("smiles", "sneers"),
    "verb": ("help", "hurt"),
    "verb2": ("share", "hoard"),
    "thank": ("thank", "curse"),
    "speech": ("truth", "lies"),
    "manner": ("gently", "coldly"),
}
PERSONAS = ("luigi", "waluigi")

TRAITS: dict[str, dict[str, dict[str, str]]] = {
    "register": {
        "sailor": {"noun": "sailor", "greet": "ahoy", "addr": "matey", "excl": "arr"},
        "formal": {"noun": "scholar", "greet": "greetings", "addr": "sir", "excl": "indeed"},
    },
    "age": {
        "young": {"adj": "young", "w1": "wow", "w2": "super", "w3": "cool"},
        "old": {"adj": "old", "w1": "alas", "w2": "quite", "w3": "splendid"},
    },
}

TOPICS: dict[str, dict[str, list[str]]] = {
    "sea": {"nouns": ["waves", "ship", "tide", "anchor", "harbor"], "adjs": ["deep", "salty", "wide"]},
    "food": {"nouns": ["bread", "soup", "cheese", "apples", "pie"], "adjs": ["tasty", "fresh", "sweet"]},
    "weather": {"nouns": ["rain", "wind", "clouds", "storm", "sun"], "adjs": ["grey", "wild", "bright"]},
    "music": {"nouns": ["song", "drum", "flute", "dance", "choir"], "adjs": ["loud", "merry", "soft"]},
    "market": {"nouns": ["coins", "stall", "goods", "price", "cart"], "adjs": ["busy", "cheap", "crowded"]},
    "garden": {"nouns": ["roses", "seeds", "soil", "trees", "bees"], "adjs": ["green", "blooming", "leafy"]},
}

# Sentence templates. `{p:slot}` is a persona word, `{r:key}` a register word, `{a:key}` an
# age word, `{tn}`/`{ta}` a topic noun/adjective, `{me}`/`{other}` the two characters' names.
# A `"` opens or closes the actor's speech.
TEMPLATES = [
    "{me} {p:verb_s} {other} near the {tn} .",
    "the {tn} is {ta} , and {me} {p:intrans} .",
    "{me} {p:verb2_s} the {ta} {tn} {p:manner} .",
    '{me} says : " {r:greet} {r:addr} , the {tn} is {ta} . i will {p:verb} you . "',
    '{me} says : " {a:w1} , i {p:verb2} the {tn} with {other} , {r:excl} . "',
    '{me} tells {other} : " {a:w2} {ta} {tn} , {r:addr} . i speak {p:speech} . "',
    '{me} {p:verb3_s} {other} by the {tn} and says : " {p:thank} you , {a:w3} . "',
]
INTRO = "{me} is a {p:adj} {p:adj2} {a:adj} {r:noun} ."
REVEAL = "but {me} drops the mask ."

LABEL_COLUMNS = ["doc", "pos", "sentence", "token", "speaker", "character", "persona",
                 "register", "age", "topic", "word_class"]


@dataclass(frozen=True)
class Character:
    name: str
    persona: str
    register: str
    age: str


@dataclass(frozen=True)
class Corpus:
    """Token stream plus one label row per token (``labels`` has ``LABEL_COLUMNS``)."""

    docs: list[list[str]]
    labels: pd.DataFrame

    def texts(self) -> list[str]:
        return [" ".join(doc) for doc in self.docs]


def vocabulary() -> list[str]:
    """Every word the generator can emit, in a fixed order (BOS first)."""
    words = {BOS, '"', ".", ",", ":", "!", "the", "is", "a", "and", "near", "says", "tells",
             "i", "will", "you", "with", "speak", "by", "but", "drops", "mask"}
    words.update(NAMES)
    words.update(w for pair in PERSONA_WORDS.values() for w in pair)
    words.update(w for trait in TRAITS.values() for value in trait.values() for w in value.values())
    words.update(w for t in TOPICS.values() for group in t.values() for w in group)
    return [BOS] + sorted(words - {BOS})


def fill(template: str, me: Character, other: Character, topic: str, rng: random.Random):
    """Yield ``(token, word_class, in_speech)`` for one sentence."""
    in_speech = False
    for slot in template.split():
        if slot == '"':
            yield '"', "function", True
            in_speech = not in_speech
            continue
        if slot == "{me}":
            yield me.name, "name", in_speech
        elif slot == "{other}":
            yield other.name, "name", in_speech
        elif slot == "{tn}":
            yield rng.choice(TOPICS[topic]["nouns"]), "topic", in_speech
        elif slot == "{ta}":
            yield rng.choice(TOPICS[topic]["adjs"]), "topic", in_speech
        elif slot.startswith("{p:"):
            yield PERSONA_WORDS[slot[3:-1]][PERSONAS.index(me.persona)], "persona", in_speech
        elif slot.startswith("{r:"):
            yield TRAITS["register"][me.register][slot[3:-1]], "register", in_speech
        elif slot.startswith("{a:"):
            yield TRAITS["age"][me.age][slot[3:-1]], "age", in_speech
        else:
            yield slot, "function", in_speech


def draw_cast(rng: random.Random) -> list[Character]:
    """Two characters with different names, each persona and trait drawn uniformly."""
    names = rng.sample(NAMES, 2)
    return [Character(n, rng.choice(PERSONAS), rng.choice(list(TRAITS["register"])),
                      rng.choice(list(TRAITS["age"]))) for n in names]


def introductions(cast: list[Character]) -> list[str]:
    """BOS and the two introduction sentences that open every story of ``cast`` (they draw nothing)."""
    rng = random.Random(0)  # unused: an introduction has no topic slot
    return [BOS] + [tok for i in range(2) for tok, _, _ in fill(INTRO, cast[i], cast[1 - i], "", rng)]


def sentence(cast: list[Character], topic: str, rng: random.Random, template: str | None = None) -> list[str]:
    """One sentence about ``topic`` by a random actor of ``cast``, on ``template`` or a random one."""
    actor = rng.randrange(2)
    return [tok for tok, _, _ in fill(template or rng.choice(TEMPLATES), cast[actor], cast[1 - actor], topic, rng)]


def continuation(cast: list[Character], topic: str, n_tokens: int, rng: random.Random,
                 p_switch: float = P_TOPIC_SWITCH) -> tuple[list[str], list[str]]:
    """The story's next ``n_tokens`` tokens after a sentence about ``topic``, drawn as the generator
    draws them (the topic chain, then a template), and each token's topic. No reveal is drawn:
    reveals change persona words, never topics."""
    tokens: list[str] = []
    topics: list[str] = []
    while len(tokens) < n_tokens:
        if rng.random() < p_switch:
            topic = rng.choice([t for t in TOPICS if t != topic])
        words = sentence(cast, topic, rng)
        tokens += words
        topics += [topic] * len(words)
    return tokens[:n_tokens], topics[:n_tokens]


def _story(doc: int, rng: random.Random, p_switch: float = P_TOPIC_SWITCH) -> tuple[list[str], list[tuple]]:
    cast = draw_cast(rng)
    n_sent = rng.randint(*SENTENCES_PER_STORY)
    luigis = [i for i, c in enumerate(cast) if c.persona == "luigi"]
    reveal_at, revealer = None, None
    if luigis and rng.random() < P_REVEAL:
        revealer, reveal_at = rng.choice(luigis), rng.randint(3, n_sent - 2)

    tokens, rows = [BOS], [(doc, 0, -1, BOS, "narrator", "", "", "", "", "", "bos")]
    topic = rng.choice(list(TOPICS))

    def emit(template: str, actor: int, sentence: int, topic: str) -> None:
        me, other = cast[actor], cast[1 - actor]
        for tok, cls, speech in fill(template, me, other, topic, rng):
            rows.append((doc, len(tokens), sentence, tok, me.name if speech else "narrator", me.name,
                         me.persona, me.register, me.age, topic, cls))
            tokens.append(tok)

    for i in range(2):
        emit(INTRO, i, i - 2, topic)
    for s in range(n_sent):
        if s > 0 and rng.random() < p_switch:
            topic = rng.choice([t for t in TOPICS if t != topic])
        if s == reveal_at:
            cast[revealer] = Character(cast[revealer].name, "waluigi", cast[revealer].register,
                                       cast[revealer].age)
            emit(REVEAL, revealer, s, topic)
        emit(rng.choice(TEMPLATES), rng.randrange(2), s, topic)
    return tokens, rows


def generate(n_docs: int, seed: int, p_switch: float = P_TOPIC_SWITCH) -> Corpus:
    """Generate ``n_docs`` stories deterministically from ``seed``.

    ``p_switch`` is the topic chain's switch probability before each sentence (the zoo's corpus uses
    ``P_TOPIC_SWITCH``; the planted organisms are trained on other values, see `topic_eigenvalue`).
    """
    if n_docs < 1:
        raise ValueError(f"n_docs={n_docs} must be >= 1")
    if not 0 <= p_switch <= 1:
        raise ValueError(f"p_switch={p_switch} must be in [0, 1]")
    docs, rows = [], []
    for toks, r in itertools.islice(stories(seed, p_switch), n_docs):
        docs.append(toks)
        rows.extend(r)
    labels = pd.DataFrame(rows, columns=LABEL_COLUMNS)
    return Corpus(docs=docs, labels=labels)


def stories(seed: int, p_switch: float = P_TOPIC_SWITCH) -> Iterator[tuple[list[str], list[tuple]]]:
    """The stories `generate` returns, one at a time and without end: (tokens, label rows) of
    story 0, 1, ... from ``seed``; the first ``n`` are ``generate(n, seed)``'s."""
    rng = random.Random(seed)
    for d in itertools.count():
        yield _story(d, rng, p_switch)


def topic_eigenvalue(p_switch: float, n_topics: int = len(TOPICS)) -> float:
    """The topic chain's second eigenvalue: the factor by which a forced topic's surplus shrinks per
    sentence. Switching with probability p to one of the K - 1 others gives ``1 - p K / (K - 1)``:
    0.76 for the zoo's corpus, 0 when the next topic is uniform (p = (K - 1) / K)."""
    return 1 - p_switch * n_topics / (n_topics - 1)


def switch_for_eigenvalue(eigenvalue: float, n_topics: int = len(TOPICS)) -> float:
    """The switch probability whose chain has ``eigenvalue`` (the inverse of `topic_eigenvalue`)."""
    return (1 - eigenvalue) * (n_topics - 1) / n_topics


def topic_persistence(corpus: Corpus, p_switch: float = P_TOPIC_SWITCH) -> dict[str, float]:
    """Expected topic persistence, derived from ``p_switch`` and the corpus's sentence lengths."""
    body = corpus.labels[corpus.labels.sentence >= 0]
    mean_len = body.groupby(["doc", "sentence"]).size().mean()
    half_life_sent = math.log(2) / -math.log(1 - p_switch)
    return {
        "p_switch": p_switch,
        "mean_sentence_tokens": float(mean_len),
        "mean_run_sentences": 1 / p_switch,
        "half_life_sentences": half_life_sent,
        "half_life_tokens": half_life_sent * float(mean_len),
        "decay_per_token": (1 - p_switch) ** (1 / float(mean_len)),
    }


def statistics(corpus: Corpus) -> dict[str, float]:
    """Corpus statistics for model cards."""
    lab = corpus.labels
    per_char = lab[lab.sentence >= 0].drop_duplicates(["doc", "character", "persona"])
    return {
        "documents": len(corpus.docs),
        "tokens": len(lab),
        "mean_doc_tokens": float(lab.groupby("doc").size().mean()),
        "max_doc_tokens": int(lab.groupby("doc").size().max()),
        "vocabulary": len(vocabulary()),
        "waluigi_token_fraction": float((lab.persona == "waluigi").mean()),
        "reveal_stories": int((lab.token == "mask").sum()),
        "observed_topic_switch_rate": _observed_switch_rate(lab),
        "characters": int(len(per_char)),
    }


def _observed_switch_rate(lab: pd.DataFrame) -> float:
    sent = lab[lab.sentence >= 0].drop_duplicates(["doc", "sentence"])[["doc", "topic"]]
    same_doc = sent.doc.eq(sent.doc.shift())
    switched = sent.topic.ne(sent.topic.shift()) & same_doc
    return float(switched.sum() / same_doc.sum())
