"""Persona probes against the pairs' construction, the acceptance figures, and determinism."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from gremlinkit import plots, stats, worlds
from gremlinkit.errors import ConfigError
from gremlinkit.experiments import personas
from gremlinkit.zoo import corpus
from gremlinkit.zoo import world as persona_world


@pytest.fixture(scope="module")
def result(toy):
    return personas.run(personas.PersonaConfig(), toy)


@pytest.mark.parametrize("trait", list(persona_world.TRAITS))
def test_pairs_differ_only_in_the_traits_words(trait):
    pairs = persona_world.persona_world(seed=3, per_template=6).pairs([trait])
    attr = persona_world.TRAITS[trait][0]
    lexicon = ({w for pair in corpus.PERSONA_WORDS.values() for w in pair} if attr == "persona"
               else {w for v in corpus.TRAITS[attr].values() for w in v.values()})
    for _, pair in pairs.groupby("pair_id"):
        neg, pos = (p.split() for p in pair.sort_values("label").prompt)
        diff = [(a, b) for a, b in zip(neg, pos) if a != b]
        assert len(neg) == len(pos) and diff
        assert all(a in lexicon and b in lexicon for a, b in diff)


def test_persona_is_decodable_on_held_out_templates(result):
    auroc = result.scores[(result.scores.trait == "persona") & (result.scores.metric == "auroc_within_template")]
    assert auroc[auroc.method == "probe"].value.min() >= 0.99
    paired = result.scores[(result.scores.trait == "persona") & (result.scores.metric == "paired_accuracy")]
    assert (paired.value == 1.0).all()
    # Pooled over held-out templates, one threshold for all: the headline readout, recomputed here.
    m = result.metrics
    assert m["trait"] == "persona" and m["auroc_pooled"] >= 0.98 and m["paired_accuracy"] == 1.0
    held = result.pairs[(result.pairs.trait == "persona") & result.pairs.heldout]
    assert sorted(held.template.unique()) == [4, 5]  # the last quarter of six templates, rounded up


def test_separation_scores_against_a_hand_computed_case():
    score = np.array([0.1, 0.9, 0.2, 0.4, 5.0, 6.0, 5.1, 5.2])  # pairs (label 0, label 1); two templates
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    pair_ids = np.repeat(np.arange(4), 2)
    s = stats.separation(score, y, groups, pair_ids)
    assert s["auroc_within_template"] == 1.0 and s["paired_accuracy"] == 1.0
    # Row order does not matter: pairs are matched by id, not by position.
    order = np.array([1, 0, 3, 2, 4, 5, 7, 6])
    assert stats.separation(score[order], y[order], groups[order], pair_ids[order]) == s
    flipped = score.copy()
    flipped[[2, 3]] = flipped[[3, 2]]  # one pair now ranks its negative above its positive
    assert stats.separation(flipped, y, groups, pair_ids)["paired_accuracy"] == 0.75
    # Pooled, template 1's offset puts its negatives above template 0's positives: 12 of 16 ordered.
    assert s["auroc_pooled"] == pytest.approx(12 / 16)


def test_steering_raises_the_waluigi_rate_monotonically(result):
    w = result.dose[result.dose.metric == "positive_rate"].sort_values("coefficient")  # Waluigi words
    assert (np.diff(w["mean"]) > 0).all() and result.metrics["steering_monotonic"]
    assert w["mean"].iloc[-1] > w["high"].iloc[0]  # the top of the sweep clears the unsteered CI
    shift = result.dose[result.dose.metric == "positive_minus_negative_logprob"].sort_values("coefficient")
    assert (np.diff(shift["mean"]) > 0).all()


def test_traits_drawn_independently_are_not_parallel(result):
    assert result.cosines.cosine.abs().max() < 0.6


def test_same_seed_same_tables(toy, result):
    again = personas.run(personas.PersonaConfig(), toy)
    pd.testing.assert_frame_equal(result.scores, again.scores)
    pd.testing.assert_frame_equal(result.dose, again.dose)


def test_a_users_pairs_file_gets_a_held_out_set_and_a_correct_paired_accuracy(toy, tmp_path):
    """Pairs from a CSV, written positive first, four templates: one is held out (never none), and
    on pairs the model separates perfectly the paired accuracy is 1, not 0."""
    built = persona_world.persona_world(seed=1, per_template=12).table
    built = built[(built.trait == "persona") & (built.template < 4)].assign(trait="kindness")
    built = built.drop_duplicates(["positive", "negative"])  # a generated world may draw a pair twice; a file may not
    path = tmp_path / "pairs.csv"
    built[["trait", "template", "positive", "negative"]].to_csv(path, index=False)
    cfg = dataclasses.replace(personas.PersonaConfig.smoke(), world=str(path))
    res = personas.run(cfg, toy)
    assert set(res.scores.trait) == {"kindness"} and res.dose.empty  # a pairs file gives no generation prompts
    held = res.pairs[res.pairs.heldout]
    assert sorted(held.template.unique()) == ["3"] and len(held) == 2 * (built.template == 3).sum() > 0
    assert res.metrics["auroc_within_template"] > 0.95 and res.metrics["paired_accuracy"] > 0.95
    # The same pairs with positive and negative swapped: the probe's ordering flips with the labels.
    swapped = built.rename(columns={"positive": "negative", "negative": "positive"})
    swapped[["trait", "template", "positive", "negative"]].to_csv(path, index=False)
    again = personas.run(cfg, toy)
    assert again.metrics["paired_accuracy"] > 0.95  # labels follow the file, whichever side is "positive"
    vec = again.vectors[("kindness", again.steer_site)]
    np.testing.assert_allclose(vec, -res.vectors[("kindness", res.steer_site)], rtol=1e-5, atol=1e-6)


def test_held_out_templates_are_never_empty():
    assert worlds.held_out_templates([0, 1, 2, 3, 4, 5]) == [4, 5]
    assert worlds.held_out_templates([0, 1, 2, 3] * 3) == [3]
    assert worlds.held_out_templates(list(range(8))) == [6, 7]
    assert worlds.held_out_templates(["a", "b"]) == ["b"]  # two templates: one each side
    assert worlds.held_out_templates(list(range(12))) == [9, 10, 11]  # numbers sort as numbers
    assert worlds.held_out_templates([str(t) for t in range(12)]) == ["9", "10", "11"]  # also from a CSV
    with pytest.raises(ConfigError, match="1 template"):
        worlds.held_out_templates([0, 0])


@pytest.mark.parametrize("kw, match", [
    ({"traits": ["charm"]}, "trait\\(s\\) \\['charm'\\] are not in the persona world"),
    ({"world": "klingon"}, "world='klingon'"),
    ({"world": "missing.csv"}, "does not exist"),
    ({"coefficients": [2.0, 1.0]}, "increasing"),
])
def test_bad_config_is_named(kw, match):
    with pytest.raises(ConfigError, match=match):
        personas.PersonaConfig(**kw).make_world()


def test_charts(result):
    profile = plots.layer_profile(result.scores).to_dict()
    assert profile["encoding"]["x"]["field"] == "layer" and profile["encoding"]["strokeDash"]["field"] == "method"
    rows = next(iter(profile["datasets"].values()))
    assert len(rows) == (result.scores.metric == "auroc_pooled").sum()
    dose = plots.dose_response(result.dose).to_dict()
    assert {layer["mark"]["type"] for layer in dose["layer"]} == {"errorband", "line"}


def test_a_one_trait_world_without_prompts_says_what_it_skipped(one_trait_world):
    model, world, _ = one_trait_world
    res = personas.run(personas.PersonaConfig(model=str(model), world=str(world)))
    assert res.metrics["trait"] == "kind" and len(res.pairs) == 2 * 60 and res.metrics["auroc_pooled"] > 0.5
    assert res.skipped == ["cosines between traits: the kind world has one trait",  # named after its file
                           "the steering sweep: the kind world has no generation prompts"]
    assert personas.cosine_table(res).skipped.tolist() == res.skipped[:1]
    assert personas.dose_table(res).skipped.tolist() == res.skipped[1:]
    assert "no steering sweep" in plots.dose_response(res.dose).to_dict()["title"]


@pytest.mark.slow
def test_notebook_01_runs_on_a_one_trait_world_and_prints_what_it_skipped(one_trait_world, tmp_path):
    from pathlib import Path

    from gremlinkit import harness

    model, world, _ = one_trait_world
    notebook = Path(__file__).resolve().parent.parent / "notebooks" / "01_persona_probes.ipynb"
    run = harness.run_notebook(notebook, tmp_path, {"model": str(model), "world": str(world)})
    assert run.metrics["trait"] == "kind" and run.metrics["max_abs_cross_trait_cosine"] == 0.0
    import nbformat

    printed = "".join(o.get("text", "") for c in nbformat.read(run.executed, as_version=4).cells
                      for o in c.get("outputs", []))
    assert "skipped: cosines between traits: the kind world has one trait; the steering sweep" in printed
