"""The persona world's planted structure, checked against its own labels."""

import math

import numpy as np
import pandas as pd
import pytest

from gremlinkit.zoo import corpus


@pytest.fixture(scope="module")
def world():
    return corpus.generate(1500, seed=3)


def test_same_seed_same_corpus_and_labels():
    a, b = corpus.generate(50, seed=7), corpus.generate(50, seed=7)
    assert a.docs == b.docs
    pd.testing.assert_frame_equal(a.labels, b.labels)
    assert corpus.generate(50, seed=8).docs != a.docs


def test_labels_align_one_row_per_token(world):
    lab = world.labels
    assert len(lab) == sum(len(d) for d in world.docs)
    flat = [t for d in world.docs for t in d]
    assert lab.token.tolist() == flat
    assert (lab.groupby("doc").pos.apply(lambda p: (p.values == np.arange(len(p))).all())).all()


def test_topic_switch_rate_matches_the_planted_probability(world):
    # Observed switches are Binomial(n, p): allow four standard errors.
    sent = world.labels[world.labels.sentence >= 0].drop_duplicates(["doc", "sentence"])
    n = int(sent.doc.eq(sent.doc.shift()).sum())
    rate = corpus.statistics(world)["observed_topic_switch_rate"]
    se = math.sqrt(corpus.P_TOPIC_SWITCH * (1 - corpus.P_TOPIC_SWITCH) / n)
    assert abs(rate - corpus.P_TOPIC_SWITCH) < 4 * se


def test_topic_words_belong_to_the_labelled_topic(world):
    topical = world.labels[world.labels.word_class == "topic"]
    ok = [tok in corpus.TOPICS[t]["nouns"] + corpus.TOPICS[t]["adjs"] for tok, t in zip(topical.token, topical.topic)]
    assert all(ok)


def test_persona_words_follow_the_persona_label(world):
    lab = world.labels[world.labels.word_class == "persona"]
    for persona, i in (("luigi", 0), ("waluigi", 1)):
        lex = {pair[i] for pair in corpus.PERSONA_WORDS.values()}
        assert lab[lab.persona == persona].token.isin(lex).all()


def test_waluigi_lexicon_is_the_exact_inversion():
    luigi = [p[0] for p in corpus.PERSONA_WORDS.values()]
    waluigi = [p[1] for p in corpus.PERSONA_WORDS.values()]
    assert len(set(luigi)) == len(luigi) and not set(luigi) & set(waluigi)


def test_reveals_only_turn_luigi_into_waluigi(world):
    lab = world.labels[world.labels.sentence >= -2]
    flips = 0
    for (_, _), g in lab.groupby(["doc", "character"]):
        seq = g.persona.tolist()
        changes = [(a, b) for a, b in zip(seq, seq[1:]) if a != b]
        assert changes in ([], [("luigi", "waluigi")])
        flips += len(changes)
    assert flips == corpus.statistics(world)["reveal_stories"] > 0


def test_persistence_truth_follows_from_the_switch_probability(world):
    truth = corpus.topic_persistence(world)
    p = corpus.P_TOPIC_SWITCH
    assert truth["half_life_sentences"] == pytest.approx(math.log(2) / -math.log(1 - p))
    # The per-token decay compounds to the per-sentence survival over one mean sentence.
    assert truth["decay_per_token"] ** truth["mean_sentence_tokens"] == pytest.approx(1 - p)
    assert truth["half_life_tokens"] == pytest.approx(truth["half_life_sentences"] * truth["mean_sentence_tokens"])


def test_bad_size_is_rejected():
    with pytest.raises(ValueError, match="n_docs=0"):
        corpus.generate(0, seed=0)


def test_the_zoo_tour_finds_features_that_track_the_planted_labels(toy):
    from gremlinkit.experiments import zoo_tour

    res = zoo_tour.run(zoo_tour.ZooTourConfig.smoke(), toy)
    assert set(res.tables()) == {"samples", "features", "top_tokens"}
    assert res.metrics == zoo_tour.metrics(res.samples, res.features, toy)
    # Luigi prompts speak more Luigi words than Waluigi prompts do: the corpus's personas, as labelled.
    assert res.metrics["luigi_prompts_luigi_rate"] > res.metrics["waluigi_prompts_luigi_rate"]
    assert res.features.purity.between(0, 1).all() and res.metrics["mean_feature_purity"] > 0.5
