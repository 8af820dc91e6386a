"""Persona probes against the pairs' construction, the acceptance figures, and determinism."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from gremlinkit import plots
from gremlinkit.errors import ConfigError
from gremlinkit.experiments import personas
from gremlinkit.zoo import corpus


@pytest.fixture(scope="module")
def result(toy):
    return personas.run(personas.PersonaConfig(), toy)


@pytest.mark.parametrize("trait", list(personas.BUILTIN_TRAITS))
def test_pairs_differ_only_in_the_traits_words(trait):
    pairs = personas.builtin_pairs(trait, 6, seed=3)
    attr = personas.BUILTIN_TRAITS[trait][0]
    lexicon = ({w for pair in corpus.PERSONA_WORDS.values() for w in pair} if attr == "persona"
               else {w for v in corpus.TRAITS[attr].values() for w in v.values()})
    for _, pair in pairs.groupby("pair_id"):
        neg, pos = (p.split() for p in pair.sort_values("label").prompt)
        diff = [(a, b) for a, b in zip(neg, pos) if a != b]
        assert len(neg) == len(pos) and diff
        assert all(a in lexicon and b in lexicon for a, b in diff)


def test_persona_is_decodable_on_held_out_templates(result):
    auroc = result.scores[(result.scores.trait == "persona") & (result.scores.metric == "auroc")]
    assert auroc[auroc.method == "probe"].value.max() >= 0.99
    paired = result.scores[(result.scores.trait == "persona") & (result.scores.metric == "paired_accuracy")]
    assert (paired.value == 1.0).all()


def test_separation_scores_against_a_hand_computed_case():
    score = np.array([0.1, 0.9, 0.2, 0.4, 5.0, 6.0, 5.1, 5.2])  # pairs (label 0, label 1); two templates
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    pair_ids = np.repeat(np.arange(4), 2)
    s = personas._separation(score, y, groups, pair_ids)
    assert s["auroc"] == 1.0 and s["paired_accuracy"] == 1.0
    # Row order does not matter: pairs are matched by id, not by position.
    order = np.array([1, 0, 3, 2, 4, 5, 7, 6])
    assert personas._separation(score[order], y[order], groups[order], pair_ids[order]) == s
    flipped = score.copy()
    flipped[[2, 3]] = flipped[[3, 2]]  # one pair now ranks its negative above its positive
    assert personas._separation(flipped, y, groups, pair_ids)["paired_accuracy"] == 0.75
    # Pooled, template 1's offset puts its negatives above template 0's positives: 12 of 16 ordered.
    assert s["auroc_pooled"] == pytest.approx(12 / 16)


def test_steering_raises_the_waluigi_rate_monotonically(result):
    w = result.dose[result.dose.metric == "waluigi_rate"].sort_values("coefficient")
    assert (np.diff(w["mean"]) > 0).all()
    assert w["mean"].iloc[-1] > w["high"].iloc[0]  # the top of the sweep clears the unsteered CI
    shift = result.dose[result.dose.metric == "waluigi_minus_luigi_logprob"].sort_values("coefficient")
    assert (np.diff(shift["mean"]) > 0).all()


def test_traits_drawn_independently_are_not_parallel(result):
    assert result.cosines.cosine.abs().max() < 0.6


def test_same_seed_same_tables(toy, result):
    again = personas.run(personas.PersonaConfig(), toy)
    pd.testing.assert_frame_equal(result.scores, again.scores)
    pd.testing.assert_frame_equal(result.dose, again.dose)


def test_user_pairs_work_like_built_in_ones(toy):
    built = personas.builtin_pairs("persona", 12, seed=1)
    pairs = {"kindness": {"positive": built[built.label == 1].prompt.tolist(),
                          "negative": built[built.label == 0].prompt.tolist()}}
    # The default held-out templates (4, 5) are the built-in ones: user pairs hold out their own last
    # quarter instead, never an empty set.
    cfg = dataclasses.replace(personas.PersonaConfig.smoke(), traits=[], custom_pairs=pairs)
    res = personas.run(cfg, toy)
    auroc = res.scores[(res.scores.metric == "auroc") & (res.scores.method == "probe")]
    assert set(res.scores.trait) == {"kindness"} and auroc.value.max() > 0.95 and res.dose is None
    # User pairs are written positive first; matched pairs are still ordered by their labels.
    paired = res.scores[(res.scores.metric == "paired_accuracy") & (res.scores.method == "probe")]
    assert paired.set_index("layer").value.loc[auroc.set_index("layer").value.idxmax()] > 0.95


def test_held_out_templates_are_never_empty():
    assert personas.held_out_templates(np.array([0, 1, 2, 3, 4, 5]), [4, 5]) == [4, 5]
    assert personas.held_out_templates(np.array([0, 1, 2, 3] * 3), [4, 5]) == [3]
    assert personas.held_out_templates(np.arange(8), [9]) == [6, 7]
    with pytest.raises(ConfigError, match="1 template"):
        personas.held_out_templates(np.array([0, 0]), [4])


@pytest.mark.parametrize("kw, match", [
    ({"traits": ["charm"]}, "unknown trait\\(s\\) \\['charm'\\]"),
    ({"test_templates": [9]}, "test_templates=\\[9\\]"),
    ({"coefficients": [2.0, 1.0]}, "increasing"),
    ({"custom_pairs": {"x": {"positive": ["a"], "negative": []}}}, "equally long"),
])
def test_bad_config_is_named(kw, match):
    with pytest.raises(ConfigError, match=match):
        personas.PersonaConfig(**kw)


def test_charts(result):
    profile = plots.layer_profile(result.scores).to_dict()
    assert profile["encoding"]["x"]["field"] == "layer" and profile["encoding"]["strokeDash"]["field"] == "method"
    rows = next(iter(profile["datasets"].values()))
    assert len(rows) == (result.scores.metric == "auroc").sum()
    dose = plots.dose_response(result.dose).to_dict()
    assert {layer["mark"]["type"] for layer in dose["layer"]} == {"errorband", "line"}
