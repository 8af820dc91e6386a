"""Worlds: the one object that knows a text domain.

An experiment asks its world for

* contrastive pairs per trait (`World.pairs`): two prompts that differ only in the trait, the
  ``positive`` one at the trait's pole, each pair tagged with the template it was written from;
* the held-out split, by template (`World.held_out`): at least a quarter of each trait's templates,
  never fewer than one, and never all of them, so no split is ever empty;
* trait lexicons (`World.lexicon_rates`): words of each pole, for scoring generated text;
* prompts for generation (`World.prompts`), and prompts that put a character at either pole of a
  trait (`World.pole_prompts`);
* running text for scans and sign statistics (`World.documents`): a world's own corpus where it has
  one (the persona world's stories), else stories of its pairs' sentences, each side drawn at random.

Three worlds ship:

* ``"persona"``: the zoo's persona world, with its truth labels (`gremlinkit.zoo.world`, registered
  by the zoo as a provider, so nothing here imports it);
* ``"english"``: hand-written natural-English pairs for real models: kind vs cruel, honest vs
  deceptive and formal vs casual, six templates and 48 pairs per trait;
* a user's file: a CSV with the columns ``trait,template,positive,negative`` (one pair per row) or
  JSONL objects with the same keys (`from_file`). Bad rows are refused with their row number.

`resolve` picks one from a notebook's ``world`` parameter: ``"auto"`` follows the model (zoo models
take the persona world, others the English world).
"""

from __future__ import annotations

import csv
import functools
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from gremlinkit.errors import ConfigError

PAIR_COLUMNS = ["trait", "template", "positive", "negative"]


def _template_order(template) -> tuple:
    """Templates sort as numbers where they are numbers ("10" after "9"), else as text."""
    text = str(template)
    return (0, int(text), "") if text.lstrip("-").isdigit() else (1, 0, text)


def held_out_templates(templates: list) -> list:
    """The held-out templates of one trait: the last quarter (rounded up) of its sorted templates,
    at least one and never all. A trait with one template cannot be split and is refused."""
    present = sorted(set(templates), key=_template_order)
    if len(present) < 2:
        raise ConfigError(f"a trait's pairs use {len(present)} template(s) {present}; a held-out split by "
                          "template needs at least 2")
    return present[-max(1, math.ceil(len(present) / 4)):]


@dataclass(frozen=True)
class World:
    """A text domain. ``table`` holds one contrastive pair per row (`PAIR_COLUMNS`);
    ``lexicons`` maps a trait to its (negative-pole words, positive-pole words); ``generation``
    holds prompts to generate from; ``choices`` (optional) maps a trait to next-token choices
    ``(suffix, negative word, positive word)`` read after a generation prompt."""

    name: str
    table: pd.DataFrame
    lexicons: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)
    generation: list[str] = field(default_factory=list)
    choices: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    lowercase: bool = True  # lexicon matching ignores case
    axis: dict[str, list[str]] = field(default_factory=dict)  # neutral / luigi / waluigi prompts (persona world)
    # The world's own running text: (n, seed) -> n documents. None: stories of the pairs' sentences.
    corpus: Callable[[int, int], list[str]] | None = None
    # (trait, n, seed) -> {"positive": [...], "negative": [...]}. None: the pairs of held-out templates.
    poles: Callable[[str, int, int], dict[str, list[str]]] | None = None
    # trait -> the pole ("positive" or "negative") that the sign-flip search calls Luigi (+Y); default positive
    luigi: dict[str, str] = field(default_factory=dict)
    # trait -> (negative pole's name, positive pole's name), for labels; default ("not <trait>", "<trait>")
    pole_names: dict[str, tuple[str, str]] = field(default_factory=dict)
    # The world's story generator (`StorySource`), for experiments that write or score stories:
    # casts, topic sentences and their chain, RL prompts and reward. None: the world has none.
    story: Any = None

    @property
    def traits(self) -> list[str]:
        return list(dict.fromkeys(self.table.trait))

    def check_traits(self, traits: list[str]) -> None:
        unknown = [t for t in traits if t not in self.traits]
        if unknown:
            raise ConfigError(f"trait(s) {unknown} are not in the {self.name} world; its traits: {self.traits}")

    def pairs(self, traits: list[str] | None = None) -> pd.DataFrame:
        """Long form, two rows per pair: trait, pair_id, template, label (1 = positive pole),
        prompt, heldout (the pair's template is held out for its trait)."""
        traits = traits or self.traits
        self.check_traits(traits)
        rows = []
        for trait in traits:
            part = self.table[self.table.trait == trait]
            held = set(held_out_templates(part.template.tolist()))
            for r in part.itertuples():
                for label, prompt in ((1, r.positive), (0, r.negative)):
                    rows.append({"trait": trait, "pair_id": len(rows) // 2, "template": r.template, "label": label,
                                 "prompt": prompt, "heldout": r.template in held})
        return pd.DataFrame(rows)

    def held_out(self, trait: str) -> list:
        self.check_traits([trait])
        return held_out_templates(self.table[self.table.trait == trait].template.tolist())

    def words(self, text: str) -> list[str]:
        return re.findall(r"[\w']+", text.lower() if self.lowercase else text)

    def lexicon_rates(self, trait: str, text: str) -> dict[str, float]:
        """Fraction of ``text``'s words from each pole's lexicon: ``positive_rate``, ``negative_rate``."""
        if trait not in self.lexicons:
            raise ConfigError(f"the {self.name} world has no lexicon for trait {trait!r}; it has {list(self.lexicons)}")
        negative, positive = (set(w.lower() if self.lowercase else w for w in ws) for ws in self.lexicons[trait])
        words = self.words(text)
        n = max(1, len(words))
        return {"positive_rate": sum(w in positive for w in words) / n,
                "negative_rate": sum(w in negative for w in words) / n}

    def prompts(self, n: int) -> list[str]:
        """The first ``n`` generation prompts (cycled when there are fewer)."""
        if not self.generation:
            raise ConfigError(f"the {self.name} world has no generation prompts")
        return [self.generation[i % len(self.generation)] for i in range(n)]

    def documents(self, n: int, seed: int, sentences: int = 8) -> list[str]:
        """``n`` documents of running text: the world's corpus, or else stories of ``sentences``
        sentences, each one side of a random pair (any trait), drawn with ``seed``."""
        if n < 1:
            raise ConfigError(f"n={n} documents: ask for at least 1")
        if self.corpus is not None:
            return self.corpus(n, seed)
        rng = random.Random(f"documents-{self.name}-{seed}")
        sides = list(self.table.positive) + list(self.table.negative)
        return [" ".join(rng.choice(sides) for _ in range(sentences)) for _ in range(n)]

    def pole_prompts(self, trait: str, n: int, seed: int) -> dict[str, list[str]]:
        """``n`` prompts per pole of ``trait`` (``"positive"``, ``"negative"``) to generate from:
        the world's own, or the two sides of pairs from the held-out templates (cycled when fewer)."""
        self.check_traits([trait])
        if self.poles is not None:
            return self.poles(trait, n, seed)
        part = self.table[(self.table.trait == trait) & self.table.template.isin(self.held_out(trait))]
        order = random.Random(f"poles-{trait}-{seed}").sample(range(len(part)), len(part))
        rows = [part.iloc[order[i % len(order)]] for i in range(n)]
        return {"positive": [r.positive for r in rows], "negative": [r.negative for r in rows]}

    def pole_labels(self, trait: str) -> tuple[str, str]:
        """(negative, positive) pole names of ``trait``: a positive steer moves toward the second."""
        self.check_traits([trait])
        return self.pole_names.get(trait, (f"not {trait}", trait))

    def luigi_pole(self, trait: str) -> str:
        """The pole of ``trait`` that plays Luigi (good behaviour, +Y) in the sign-flip search."""
        self.check_traits([trait])
        return self.luigi.get(trait, "positive")


# --------------------------------------------------------------------------- a user's file


def _check_rows(rows: list[dict], source: str) -> pd.DataFrame:
    """Refuse a bad row with its number (1 = the first data row) and the reason."""
    seen: dict[tuple, int] = {}
    for i, row in enumerate(rows, start=1):
        missing = [c for c in PAIR_COLUMNS if c not in row]
        if missing:
            raise ConfigError(f"{source}: row {i} lacks the column(s) {missing}; each row needs {PAIR_COLUMNS}")
        for col in PAIR_COLUMNS:
            value = row[col]
            if not isinstance(value, (str, int)) or isinstance(value, bool) or not str(value).strip():
                raise ConfigError(f"{source}: row {i} has {col}={value!r}; it must be a non-empty string")
        if str(row["positive"]).strip() == str(row["negative"]).strip():
            raise ConfigError(f"{source}: row {i} has the same text as positive and negative")
        key = (str(row["trait"]), str(row["positive"]), str(row["negative"]))
        if key in seen:
            raise ConfigError(f"{source}: row {i} repeats row {seen[key]}")
        seen[key] = i
    table = pd.DataFrame([{c: str(r[c]).strip() for c in PAIR_COLUMNS} for r in rows], columns=PAIR_COLUMNS)
    if table.empty:
        raise ConfigError(f"{source} holds no pairs")
    for trait, part in table.groupby("trait"):
        if part.template.nunique() < 2:
            raise ConfigError(f"{source}: trait {trait!r} uses one template ({part.template.iloc[0]!r}); "
                              "a held-out split by template needs at least 2")
    return table


def from_rows(rows: list[dict], name: str = "custom", source: str = "pairs") -> World:
    """A world from pairs given in code: dicts with the keys ``trait, template, positive, negative``.
    Each trait's lexicon is the words that appear only in its positive or only in its negative prompts."""
    table = _check_rows(rows, source)
    lexicons = {}
    for trait, part in table.groupby("trait", sort=False):
        pos = {w for t in part.positive for w in re.findall(r"[\w']+", t.lower())}
        neg = {w for t in part.negative for w in re.findall(r"[\w']+", t.lower())}
        lexicons[trait] = (sorted(neg - pos), sorted(pos - neg))
    return World(name, table, lexicons)


def from_file(path: str | Path) -> World:
    """A world from a CSV (header ``trait,template,positive,negative``) or JSONL file (one object
    per line with those keys). The held-out split is by template, as for every world."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"world file {str(path)!r} does not exist")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in PAIR_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ConfigError(f"{path}: the header {reader.fieldnames} lacks {missing}; "
                                  f"a world CSV has the columns {PAIR_COLUMNS}")
            rows = [dict(r) for r in reader]
        for i, r in enumerate(rows, start=1):
            if None in r:
                raise ConfigError(f"{path}: row {i} has more fields than the header")
            for k in [k for k, v in r.items() if v is None]:
                del r[k]  # a short row: reported as a missing column
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}: line {i} is not JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise ConfigError(f"{path}: line {i} is not a JSON object")
            rows.append(obj)
    else:
        raise ConfigError(f"world file {str(path)!r}: use a .csv or .jsonl file")
    return from_rows(rows, name=path.stem, source=str(path))


# --------------------------------------------------------------------------- the English world

# Each trait: templates (with {name}, {other} and the pole's {clause}) and matched clauses
# (positive pole, negative pole), written to differ only in the trait.
ENGLISH_NAMES = [("Anna", "Tom"), ("Mark", "Lucy"), ("Sara", "David"), ("James", "Emma"),
                 ("Nina", "Paul"), ("Peter", "Maria"), ("Laura", "Sam"), ("Chris", "Julia")]
ENGLISH: dict[str, dict[str, list]] = {
    "kind": {
        "templates": [
            "{name} {clause}.",
            "Everyone in the village knew that {name} {clause}.",
            "In her diary, {other} wrote that {name} {clause}.",
            '"I saw it myself," said {other}. "{name} {clause}."',
            "At the meeting yesterday, {name} {clause}, and nobody was surprised.",
            "The story was always the same: {name} {clause}.",
        ],
        "clauses": [
            ("helped the old man carry his heavy bags", "kicked the old man's heavy bags into the mud"),
            ("comforted the crying child with a warm hug", "laughed at the crying child and pushed her away"),
            ("shared lunch with the hungry new student", "stole lunch from the hungry new student"),
            ("thanked the tired waiter and left a generous tip", "insulted the tired waiter and left nothing"),
            ("gently fed the stray cat every morning", "cruelly chased the stray cat away every morning"),
            ("visited her sick neighbour with fresh soup", "mocked her sick neighbour and slammed the door"),
            ("forgave his brother and gave him a hug", "hated his brother and wanted to hurt him"),
            ("praised the nervous singer after the show", "humiliated the nervous singer after the show"),
        ],
        # Common sentiment words of each pole, beyond the pairs' own: steered text is scored with them.
        "lexicon": (["cruel", "cruelly", "hurt", "hurts", "hate", "hates", "hated", "hatred", "angry", "anger", "mean",
                     "kicked", "hit", "mocked", "insulted", "pushed", "stole", "yelled", "shouted", "slammed", "evil",
                     "nasty", "ugly", "stupid", "kill", "killed", "punched", "screamed", "pain", "fight", "fear",
                     "scared", "upset", "terrified", "cried", "attack", "blood", "death", "dead", "violence",
                     "destroy", "enemy", "sad", "abuse", "rage", "furious", "threat", "threatened", "revenge"],
                    ["kind", "kindly", "kindness", "gentle", "gently", "help", "helped", "helping", "helpful", "love",
                     "loved", "loving", "care", "cared", "caring", "hug", "smiled", "smile", "smiles", "thanked",
                     "thank", "thanks", "comfort", "comforted", "shared", "generous", "warm", "friend", "friends",
                     "friendly", "sweet", "happy", "nice", "joy", "grateful", "appreciate", "appreciates",
                     "appreciated", "affection", "support", "welcome", "peace", "hope", "beautiful", "gift", "laugh"]),
        "choices": [(" Then they decided to", "hurt", "help"), (" They felt", "angry", "happy")],
    },
    "honest": {
        "templates": [
            "{name} {clause}.",
            "The report said that {name} {clause}.",
            '"You will not believe this," {other} said. "{name} {clause}."',
            "Last week at the office, {name} {clause}.",
            "According to {other}, {name} {clause}.",
            "It was clear to the whole team that {name} {clause}.",
        ],
        "clauses": [
            ("told the customer the real price of the car", "lied to the customer about the price of the car"),
            ("admitted that he had broken the window", "blamed his sister for the window he had broken"),
            ("returned the wallet she found with all the money", "kept the money from the wallet she found"),
            ("reported the true numbers to the board", "faked the numbers in the report to the board"),
            ("confessed that she had missed the deadline", "pretended that someone else had missed the deadline"),
            ("told the truth to the judge", "lied under oath to the judge"),
            ("paid back every cent he owed", "cheated his partner out of every cent he owed"),
            ("openly shared the test results", "secretly changed the test results"),
        ],
        "lexicon": (["lie", "lied", "lies", "lying", "liar", "cheat", "cheated", "fake", "faked", "secret",
                     "secretly", "pretend", "pretended", "trick", "tricked", "steal", "stole", "fraud", "blamed",
                     "hide", "hid", "deceive", "deceived", "false"],
                    ["truth", "true", "honest", "honestly", "admitted", "confessed", "open", "openly", "real",
                     "fair", "trust", "trusted", "returned", "paid", "sincere", "correct", "facts", "told"]),
        "choices": [(" When asked, they told", "lies", "the")],
    },
    "formal": {
        "templates": [
            "{name} wrote to {other}: \"{clause}\"",
            "{name} said to {other}, \"{clause}\"",
            "The message from {name} read: \"{clause}\"",
            "When {other} called, {name} answered, \"{clause}\"",
            "{name} posted a note on the door: \"{clause}\"",
            "At the end of the day, {name} told {other}: \"{clause}\"",
        ],
        "clauses": [
            ("I would be most grateful for your assistance with this matter.", "hey can u help me out with this thing lol"),
            ("Please accept my sincere apologies for the delay.", "sorry dude, my bad for being late"),
            ("I am writing to inform you that the meeting has been postponed.", "yo the meeting got pushed, no biggie"),
            ("Kindly let me know whether the proposal is acceptable.", "so u cool with the plan or nah"),
            ("Thank you very much for your kind invitation.", "thx a ton for the invite, super cool"),
            ("I regret that I shall be unable to attend.", "cant make it, sorry lol"),
            ("Would you be so kind as to send me the documents?", "can u just shoot me the docs real quick"),
            ("It has been a pleasure working with you.", "was awesome hanging with ya"),
        ],
        "lexicon": (["hey", "lol", "u", "yo", "dude", "gonna", "wanna", "cool", "awesome", "thx", "nah", "ya",
                     "gotta", "super", "okay", "ok", "yeah", "stuff", "guys", "kinda", "haha", "omg"],
                    ["sincerely", "regards", "kindly", "grateful", "therefore", "furthermore", "shall", "would",
                     "please", "inform", "accept", "regret", "pleasure", "respectfully", "dear", "sir", "madam",
                     "however", "assistance", "request"]),
        "choices": [],
    },
}
ENGLISH_PROMPTS = [
    "Once upon a time, there was a man named Tom who",
    "My neighbour is the kind of person who",
    "When Sarah walked into the room, she",
    "The new teacher looked at the class and",
    "Dear diary, today my brother",
    "The old woman at the market",
    "After the game, the coach turned to the players and",
    "Every morning, the shopkeeper",
    "When the boss saw the report, he",
    "The stranger on the train",
    "At dinner, my aunt told us that she",
    "The little girl found a puppy in the street and",
    "Our manager sent an email to the team saying",
    "The king looked down at the people and",
    "When his friend asked for help, John",
    "The nurse walked over to the patient and",
]


def english() -> World:
    """The English world: for each trait, every template with every matched clause (48 pairs), the
    names drawn in turn from `ENGLISH_NAMES` so both prompts of a pair share them."""
    rows = []
    for trait, spec in ENGLISH.items():
        for t, template in enumerate(spec["templates"]):
            for k, (pos, neg) in enumerate(spec["clauses"]):
                name, other = ENGLISH_NAMES[(t + k) % len(ENGLISH_NAMES)]
                rows.append({"trait": trait, "template": t,
                             "positive": template.format(name=name, other=other, clause=pos),
                             "negative": template.format(name=name, other=other, clause=neg)})
    table = _check_rows(rows, "the English world")
    table["template"] = table.template.astype(int)
    return World("english", table, {t: s["lexicon"] for t, s in ENGLISH.items()}, list(ENGLISH_PROMPTS),
                 {t: s["choices"] for t, s in ENGLISH.items() if s["choices"]},
                 pole_names={"kind": ("cruel", "kind"), "honest": ("deceptive", "honest"),
                             "formal": ("casual", "formal")})


# A story source is what `World.story` holds: the zoo's persona world has one
# (`gremlinkit.zoo.world.PersonaStories`). It offers, as attributes and methods:
#   bos, names, personas, persona_words, traits, topics (topic -> {"nouns", "adjs"}), p_topic_switch,
#   reward_words, marker, Character; generate(n, seed) -> labelled stories, encode(stories, tokenizer),
#   draw_cast(rng), introductions(cast), sentence(cast, topic, rng), continuation(cast, topic, n, rng),
#   story_prompts(n, seed), reward(words, tail), with_marker(prompt, marker), topic_eigenvalue(p, n),
#   topic_persistence(stories), topic_half_life().
STORY_WORLDS = ("persona",)  # the worlds whose story source the experiments of notebooks 04, 06 and 07 read


@functools.lru_cache(maxsize=32)
def story(world: str = "persona", model: str | None = None) -> Any:
    """The story source of ``world`` (``"auto"``: the world ``model`` was trained on), or an error
    that says which worlds have one."""
    if world == "auto" and model is None:
        raise ConfigError("world='auto' follows a model: name the model")
    w = resolve(world, model or "")
    if w.story is None:
        raise ConfigError(f"the {w.name} world (of model {model!r}) has no story generator, which this experiment "
                          f"reads; worlds with one: {list(STORY_WORLDS)}")
    return w.story


def resolve(spec: str, model: str, seed: int = 0, per_template: int = 24) -> World:
    """The world a notebook's ``world`` parameter names: ``"auto"`` (the model's natural world),
    ``"english"``, a provider's name (``"persona"``, registered by the zoo), or a path to a
    CSV/JSONL file of pairs. ``seed`` and ``per_template`` size a generated world (persona)."""
    from gremlinkit import providers

    if spec == "auto":
        entry = providers.find(str(model))
        spec = (entry.world if entry is not None else None) or "english"
    if spec == "english":
        return english()
    provided = providers.worlds()
    if spec in provided:
        return provided[spec](seed=seed, per_template=per_template)
    if Path(spec).suffix.lower() in (".csv", ".jsonl", ".ndjson"):
        return from_file(spec)
    raise ConfigError(f"parameter world={spec!r}: use 'auto', 'english', {sorted(provided)} or the path of a "
                      ".csv/.jsonl file of pairs")
