"""The planted organisms: their chains are what the cards say, and each learned its own."""

import numpy as np
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from gremlinkit.zoo import cards, corpus, planted, registry


@pytest.mark.parametrize("p_switch", [0.2, 5 / 6, 0.05])
def test_the_stay_rate_measure_recovers_a_generated_chain(p_switch):
    """On stories drawn with a known switch probability, the lexicon-based stay rate recovers
    1 - p_switch (the generator's truth), and each sentence's topic matches the corpus's label."""
    stories = corpus.generate(400, seed=3, p_switch=p_switch)
    measured = planted.stay_rate([doc[1:] for doc in stories.docs])
    assert measured["pairs"] > 2000
    assert measured["stay_rate"] == pytest.approx(1 - p_switch, abs=0.03)
    labels = stories.labels
    doc0 = labels[(labels.doc == 0) & (labels.pos > 0)]
    truth = [g.topic.iloc[0] for _, g in doc0[doc0.sentence >= 0].groupby("sentence")]
    found = [t for t in planted.sentence_topics(stories.docs[0][1:]) if t is not None]
    assert found[-len(truth):] == truth  # the two intro sentences carry no topic words


def test_eigenvalue_and_switch_probability_are_inverses():
    assert corpus.topic_eigenvalue(corpus.P_TOPIC_SWITCH) == pytest.approx(0.76)
    assert corpus.topic_eigenvalue(5 / 6) == pytest.approx(0.0)
    for eig in (0.0, 0.5, 0.9):
        assert corpus.topic_eigenvalue(corpus.switch_for_eigenvalue(eig)) == pytest.approx(eig)
    with pytest.raises(ValueError, match="p_switch=1.5"):
        corpus.generate(2, seed=0, p_switch=1.5)


def test_the_default_chain_leaves_the_corpus_unchanged():
    assert corpus.generate(20, seed=7).docs == corpus.generate(20, seed=7, p_switch=corpus.P_TOPIC_SWITCH).docs


@pytest.mark.parametrize("name", list(planted.EIGENVALUES))
def test_each_planted_organism_learned_its_chain(name):
    """Recounted from fresh samples (other prompts and seed than the card's): the organism keeps its
    topic at the planted rate, within 0.06, and the card's own figure agrees."""
    card = cards.card(name)
    eig = planted.EIGENVALUES[name]
    assert card["truth"]["eigenvalue"] == eig
    assert card["truth"]["stay_probability"] == pytest.approx(1 - corpus.switch_for_eigenvalue(eig))
    path = registry.path(name)
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    spec = planted.PlantedSpec(sample_prompts=64, sample_tokens=128, seed=11)
    fresh = planted.measured_stay_rate(model, tok, spec)
    assert fresh["stay_rate"] == pytest.approx(card["truth"]["stay_probability"], abs=0.06)
    assert fresh["stay_rate"] == pytest.approx(card["learned"]["model"]["stay_rate"], abs=0.06)
    half = np.log(2) / -np.log(eig) * card["truth"]["mean_sentence_tokens"] if eig > 0 else 0.0
    assert card["truth"]["half_life_tokens"] == pytest.approx(half)
