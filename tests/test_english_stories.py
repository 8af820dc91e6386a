"""The English stories as notebook 06's story source on a real tokenizer (smollm2-135m's): every
label, reward and truth recomputed from the text itself, not from the source's own bookkeeping."""

import math
import random
from collections import Counter

import numpy as np
import pytest
from transformers import AutoTokenizer

from gremlinkit import stories
from gremlinkit.errors import ConfigError
from gremlinkit.experiments import agents
from gremlinkit.zoo import registry


@pytest.fixture(scope="module")
def source():
    src = agents.story_source("smollm2-135m")
    assert isinstance(src, stories.EnglishStories)
    return src


def _word(tokenizer, token: str) -> str:
    return tokenizer.convert_tokens_to_string([token]).strip().lower()


def test_the_toy_keeps_its_persona_stories_and_a_model_directory_gets_the_english_ones(source):
    assert agents.story_source("toy-base").name == "persona"
    assert source.bos == "<|im_start|>"  # smollm2 reads a BOS by default
    plain = agents.story_source(str(registry.path("smollm2-135m")))  # a directory no provider names
    assert isinstance(plain, stories.EnglishStories)


def test_stories_spell_their_text_and_label_each_token_with_its_sentence(source):
    tok = source.tokenizer
    gen = source.generate(20, seed=4)
    rng = random.Random("english-stories-4")  # the generator's own draws, made again
    for d, doc in enumerate(gen.docs):
        sentences, topics = stories.story(rng, 8, stories.STAY)
        assert doc[0] == source.bos and tok.convert_tokens_to_string(doc[1:]) == " ".join(sentences)
        rows = gen.labels[gen.labels.doc == d]
        assert list(rows.pos) == list(range(len(doc)))
        for k, (text, topic) in enumerate(zip(sentences, topics)):
            own = rows[rows.sentence == k]
            assert set(own.topic) == {topic}
            assert tok.convert_tokens_to_string([doc[p] for p in own.pos]).strip() == text
            words = {_word(tok, doc[p]) for p in own[own.word_class == "topic"].pos}
            spelled = {w.strip(".,").lower() for w in text.split()} & set(stories.TOPIC_WORDS.get(topic, ()))
            assert words == spelled  # every topic word of the sentence, and nothing else
    assert gen.labels.word_class.eq("topic").any()


def test_the_reward_counts_sea_words_read_back_from_the_text(source):
    tok = source.tokenizer
    rng = random.Random(0)
    words = [source.continuation(source.draw_cast(rng), rng.choice(stories.TOPICS), 48, rng)[0] for _ in range(30)]
    by_text = np.array([sum(_word(tok, w) in stories.TOPIC_WORDS["sea"] for w in ws[-16:]) / 16 for ws in words])
    assert np.array_equal(source.reward(words, 16), by_text) and by_text.max() > 0


def test_the_return_truth_is_the_chain_measured_on_generated_stories(source):
    """The sea's surplus shrinks by the chain's eigenvalue per sentence (0.64): measured on 4000
    continuations' sentence topics after a sea sentence against after a market one."""
    assert stories.topic_eigenvalue() == pytest.approx(0.64)
    rng = random.Random(1)
    cast = ("Anna", "Tom")
    surplus = []
    for k in range(1, 4):
        after = {t: np.mean([source.continuation(cast, t, 1, rng)[1][0] == "sea" if k == 1 else
                             _sentence_topic(source, cast, t, k, rng) == "sea" for _ in range(4000)])
                 for t in ("sea", "market")}
        surplus.append(after["sea"] - after["market"])
    assert surplus[0] == pytest.approx(stories.topic_eigenvalue(), abs=0.04)  # 0.7 - 0.3 / 5
    assert surplus[1] / surplus[0] == pytest.approx(stories.topic_eigenvalue(), abs=0.1)
    mean_tokens = source.mean_sentence_tokens()
    assert 8 < mean_tokens < 20
    assert source.topic_half_life() == pytest.approx(math.log(2) / -math.log(0.64) * mean_tokens)


def _sentence_topic(source, cast, topic: str, k: int, rng: random.Random) -> str:
    """The topic of the k-th sentence after a ``topic`` sentence, drawn as `continuation` draws."""
    for _ in range(k):
        if rng.random() >= source.stay:
            topic = rng.choice([t for t in stories.TOPICS if t != topic])
        source.sentence(cast, topic, rng)
    return topic


def test_name_choices_are_the_generators_uniform_draws(source):
    tok = source.tokenizer
    prompts = source.choice_prompts(16, seed=0)
    first, options = prompts["first name"]
    assert tok.convert_tokens_to_string(first[0][1:]) == stories.FIRST_NAME_PREFIX
    assert sorted(_word(tok, o).capitalize() for o in options[0]) == sorted(stories.NAMES)
    for prompt, opts in zip(*prompts["second name"]):
        me = tok.convert_tokens_to_string(prompt[1:]).split()[0]
        assert sorted(_word(tok, o).capitalize() for o in opts) == sorted(set(stories.NAMES) - {me})
    draws = source.choice_draws(6000, seed=0)
    assert set(Counter(draws["first name"])) == set(stories.NAMES)
    rows = {r["choice"]: r for r in agents.corpus_choices(6000, seed=0, story=source)}
    assert rows["first name"]["ratio"] == pytest.approx(1.0, abs=0.01)
    assert rows["second name"]["ratio"] == pytest.approx(1.0, abs=0.01)
    assert rows["first name"]["true_entropy"] == pytest.approx(math.log(12))


def test_a_tokenizer_that_splits_names_and_a_marker_are_refused():
    src = stories.EnglishStories(AutoTokenizer.from_pretrained(registry.path("smollm2-135m")), prepend_bos=False)
    src.tokens = list  # a tokenizer of characters
    with pytest.raises(ConfigError, match="several tokens"):
        src.choice_prompts(2, 0)
    with pytest.raises(ConfigError, match="no no-RL marker"):
        src.with_marker(["x"], "<unk>")
