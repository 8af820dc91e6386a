"""Worlds: the English world's pairs, a user's CSV/JSONL file of pairs (and its bad rows), the
held-out split, lexicon scoring by hand, and the import boundary between the core and the zoo."""

import ast
import json
from pathlib import Path

import pytest

from gremlinkit import worlds
from gremlinkit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_english_world_has_six_templates_and_forty_pairs_per_trait():
    world = worlds.english()
    assert world.traits == ["kind", "honest", "formal"]
    for trait in world.traits:
        part = world.table[world.table.trait == trait]
        assert part.template.nunique() >= 6 and len(part) >= 40
        assert not part.duplicated(["positive", "negative"]).any()
        held = world.held_out(trait)
        assert len(held) == 2 and set(held) < set(part.template)  # a quarter of six, rounded up; never all
    pairs = world.pairs()
    assert len(pairs) == 2 * len(world.table) and set(pairs.label) == {0, 1}
    # Both prompts of a pair share their frame: only the trait's clause differs.
    for _, pair in pairs[pairs.trait == "kind"].groupby("pair_id"):
        neg, pos = pair.sort_values("label").prompt
        assert neg != pos and neg.split()[0] == pos.split()[0]


def test_lexicon_rates_by_hand():
    world = worlds.english()
    rates = world.lexicon_rates("kind", "She smiled, then she hated him. Kindly, she left.")
    # words: she smiled then she hated him kindly she left -> 9; positive: smiled, kindly; negative: hated
    assert rates == {"positive_rate": pytest.approx(2 / 9), "negative_rate": pytest.approx(1 / 9)}
    with pytest.raises(ConfigError, match="no lexicon for trait 'x'"):
        world.lexicon_rates("x", "text")


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_csv_world_and_the_same_pairs_as_jsonl(tmp_path):
    rows = [("warm", "a", "You are a warm, friendly assistant.", "You are a curt, hostile assistant."),
            ("warm", "a", "She greeted us warmly.", "She greeted us coldly."),
            ("warm", "b", "He hugged his friend.", "He ignored his friend."),
            ("warm", "c", "They welcomed the guests.", "They turned the guests away."),
            ("warm", "d", "The host smiled kindly.", "The host frowned coldly.")]
    csv_path = _write_csv(tmp_path / "pairs.csv", "trait,template,positive,negative\n" +
                          "".join(f'{t},{k},"{p}","{n}"\n' for t, k, p, n in rows))
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps(dict(zip(worlds.PAIR_COLUMNS, r))) + "\n" for r in rows))
    a, b = worlds.from_file(csv_path), worlds.from_file(jsonl)
    assert a.table.equals(b.table) and a.traits == ["warm"]
    assert a.held_out("warm") == ["d"]  # four templates: the last one, never none
    pairs = a.pairs()
    assert pairs[pairs.heldout].prompt.tolist() == ["The host smiled kindly.", "The host frowned coldly."]
    negative, positive = a.lexicons["warm"]  # words only on one side
    assert {"warm", "warmly", "hugged", "smiled"} <= set(positive) and {"coldly", "ignored"} <= set(negative)
    assert worlds.resolve(str(csv_path), "toy-base").name == "pairs"


@pytest.mark.parametrize("body, match", [
    ("trait,template,positive\nx,0,a\n", "lacks \\['negative'\\]"),
    ("trait,template,positive,negative\nx,0,a,b\nx,1,c,\n", "row 2 has negative=''"),
    ("trait,template,positive,negative\nx,0,a,b\nx,1,c,c\n", "row 2 has the same text"),
    ("trait,template,positive,negative\nx,0,a,b\nx,1,c,d\nx,2,a,b\n", "row 3 repeats row 1"),
    ("trait,template,positive,negative\nx,0,a,b\nx,0,c,d\n", "trait 'x' uses one template"),
    ("trait,template,positive,negative\nx,0,a,b,extra\n", "row 1 has more fields"),
    ("trait,template,positive,negative\n", "holds no pairs"),
])
def test_bad_csv_rows_are_named(tmp_path, body, match):
    with pytest.raises(ConfigError, match=match):
        worlds.from_file(_write_csv(tmp_path / "bad.csv", body))


def test_bad_jsonl_lines_are_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"trait": "x", "template": 0, "positive": "a", "negative": "b"}\nnot json\n')
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        worlds.from_file(path)
    path.write_text('{"trait": "x", "template": 0, "positive": "a", "negative": "b"}\n[1, 2]\n')
    with pytest.raises(ConfigError, match="line 2 is not a JSON object"):
        worlds.from_file(path)
    path.write_text('{"trait": "x", "template": true, "positive": "a", "negative": "b"}\n')
    with pytest.raises(ConfigError, match="row 1 has template=True"):
        worlds.from_file(path)
    with pytest.raises(ConfigError, match="use a .csv or .jsonl file"):
        worlds.from_file(_write_csv(tmp_path / "pairs.txt", "x"))


def test_auto_world_follows_the_model():
    assert worlds.resolve("auto", "toy-base").name == "persona"
    assert worlds.resolve("auto", "gpt2").name == "english"  # a hub id no provider knows
    assert worlds.resolve("english", "toy-base").name == "english"


# --------------------------------------------------------------------------- the import boundary

CORE = ["errors", "generation", "interventions", "params", "plots", "prompts", "providers", "results", "sites",
        "stats", "subject", "worlds", "harness"]


def _imports(path: Path) -> set[str]:
    """Every module an ``import`` statement in ``path`` names, at any depth (lazy imports count)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


@pytest.mark.parametrize("module", CORE)
def test_the_core_imports_no_provider_experiment_or_test(module):
    """The walk reads notebook -> experiment -> world/subject -> nnsight/sae_lens: no core module
    names the zoo (a provider, found through entry points), an experiment, or the tests."""
    names = _imports(ROOT / "gremlinkit" / f"{module}.py")
    bad = sorted(n for n in names if n.startswith(("gremlinkit.zoo", "gremlinkit.experiments", "tests", "conftest"))
                 or n in ("gremlinkit.zoo", "gremlinkit.experiments"))
    assert bad == [], f"gremlinkit/{module}.py imports {bad}"


def test_experiments_reach_the_zoo_only_through_a_provider_or_its_training_data():
    """Experiments built on worlds (personas) no longer import the zoo at all."""
    names = _imports(ROOT / "gremlinkit" / "experiments" / "personas.py")
    assert not any(n.startswith("gremlinkit.zoo") for n in names)


def test_documents_are_stories_of_the_pairs_sentences_drawn_by_seed():
    world = worlds.english()
    sides = set(world.table.positive) | set(world.table.negative)
    docs = world.documents(5, seed=3, sentences=4)
    assert len(docs) == 5 and docs == world.documents(5, seed=3, sentences=4) != world.documents(5, seed=4, sentences=4)
    for doc in docs:  # four sentences, each one side of a pair, joined by spaces
        assert any(doc == " ".join(p) for p in _splits(doc, sides, 4))
    with pytest.raises(ConfigError, match="n=0 documents"):
        world.documents(0, seed=0)


def _splits(doc: str, sides: set, k: int):
    """Every way of reading ``doc`` as ``k`` members of ``sides`` joined by single spaces."""
    if k == 0:
        return [()] if doc == "" else []
    out = []
    for s in sides:
        if doc == s and k == 1:
            out.append((s,))
        elif doc.startswith(s + " "):
            out += [(s, *rest) for rest in _splits(doc[len(s) + 1:], sides, k - 1)]
    return out


def test_the_persona_worlds_documents_are_its_corpus_stories():
    from gremlinkit.zoo import corpus

    world = worlds.resolve("persona", "toy-base")
    assert world.documents(3, seed=7) == [" ".join(doc[1:]) for doc in corpus.generate(3, seed=7).docs]


def test_pole_prompts_are_matched_pairs_from_the_held_out_templates():
    world = worlds.english()
    poles = world.pole_prompts("kind", 20, seed=1)  # 16 held-out pairs: four come round again
    held = world.table[(world.table.trait == "kind") & world.table.template.isin(world.held_out("kind"))]
    pairs = set(zip(held.positive, held.negative))
    assert len(poles["positive"]) == len(poles["negative"]) == 20
    assert all(p in pairs for p in zip(poles["positive"], poles["negative"]))
    assert len(set(poles["positive"][:16])) == 16 and poles["positive"][16:] == poles["positive"][:4]
    assert world.pole_labels("kind") == ("cruel", "kind") and world.luigi_pole("kind") == "positive"
    custom = worlds.from_rows([{"trait": "t", "template": k, "positive": f"yes {k}", "negative": f"no {k}"}
                               for k in range(4)])
    assert custom.pole_labels("t") == ("not t", "t")
    persona = worlds.resolve("persona", "toy-base")
    assert persona.luigi_pole("persona") == "negative" and persona.pole_labels("persona") == ("luigi", "waluigi")
