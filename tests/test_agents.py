"""Notebook 06's measures against truth: each is checked where its value is known before it is trusted."""

import math
import random

import numpy as np
import pandas as pd
import pytest

import gremlinkit
from gremlinkit.errors import ConfigError
from gremlinkit.experiments import agents, persistence
from gremlinkit.zoo import corpus, finetune


@pytest.fixture(scope="module")
def toy():
    return {m: gremlinkit.load(m, sae=False) for m in ("toy-base", "toy-rl")}


def test_diversity_measures_on_known_samples():
    same = [["a", "b", "c"]] * 4  # four identical samples: 2 distinct bigrams of 8, every pair identical
    assert agents.diversity(same) == {"distinct_1": 3 / 12, "distinct_2": 2 / 8, "pairwise_overlap": 1.0}
    apart = [["a", "b"], ["c", "d"], ["e", "f"]]  # nothing shared
    assert agents.diversity(apart) == {"distinct_1": 1.0, "distinct_2": 1.0, "pairwise_overlap": 0.0}
    half = [["a", "b", "c"], ["a", "b", "d"]]  # bigram sets {ab, bc} and {ab, bd}: Jaccard 1/3
    assert agents.diversity(half)["pairwise_overlap"] == pytest.approx(1 / 3)
    assert agents.across_inputs([same, apart]) == pytest.approx(4 / 11)  # ab, bc, cd, ef of 8 + 3 bigrams


def test_introductions_and_continuations_follow_the_generator():
    rng = random.Random(5)
    story = corpus.generate(1, seed=5).docs[0]
    cast = corpus.draw_cast(rng)  # the generator's first draws, from the same seed
    intro = corpus.introductions(cast)
    assert story[:len(intro)] == intro
    # The topic chain: a sentence keeps its topic with probability 1 - P_TOPIC_SWITCH (counted over
    # 4,000 continuations of one sentence each; the binomial sd is 0.0063).
    rng = random.Random(0)
    kept = [corpus.continuation(cast, "sea", 1, rng)[1][0] == "sea" for _ in range(4000)]
    assert np.mean(kept) == pytest.approx(1 - corpus.P_TOPIC_SWITCH, abs=0.025)
    tokens, topics = corpus.continuation(cast, "food", 50, random.Random(1))
    assert len(tokens) == len(topics) == 50 and set(tokens) <= set(corpus.vocabulary())


def test_probe_recovers_a_planted_linear_signal_and_reads_zero_on_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8, 16))
    noise = 0.5
    y = x[:, :, 3] + noise * rng.normal(size=(200, 8))  # one target per position; the best R² is 1 / 1.25
    planted = agents.probe_r2(x, y, 200, 0)
    assert planted["r2"] == pytest.approx(1 / (1 + noise**2), abs=0.05)
    assert planted["r2_low"] < planted["r2"] < planted["r2_high"]
    null = agents.probe_r2(x, rng.normal(size=200), 200, 0)  # one target per row, unrelated to x
    assert null["r2"] < 0.02 and null["r2_low"] < 0


@pytest.mark.parametrize("signal", [0.05, 0.3, 3.0])  # weak to strong: the chosen penalty moves from high to low
def test_the_penalty_search_chooses_what_grid_search_chooses(signal):
    """`best_alpha` fits every penalty at once; sklearn's `GridSearchCV` over the same pipeline, folds
    and scoring is the reference."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    x = rng.normal(size=(120 * 4, 40))
    y = signal * x[:, :5].sum(1) + rng.normal(size=len(x))
    groups = np.repeat(np.arange(120), 4)
    search = GridSearchCV(make_pipeline(StandardScaler(), Ridge()), {"ridge__alpha": agents.ALPHAS},
                          cv=GroupKFold(n_splits=3), scoring="r2").fit(x, y, groups=groups)
    assert agents.best_alpha(x, y, groups) == search.best_params_["ridge__alpha"]


def test_the_r2_interval_scores_each_resample_of_whole_rows():
    """Every resample scored at once equals `r2_score` on each resample drawn in turn; a resample
    with a constant target is left out."""
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(5), 3)
    target = np.repeat([0.0, 1.0, 0.0, 1.0, 1.0], 3)  # five rows: about one resample in 11 is constant
    pred = target + rng.normal(size=len(target))
    order = [np.flatnonzero(groups == g) for g in range(5)]
    draws, draw_rng = [], np.random.default_rng(5)
    for _ in range(400):
        idx = np.concatenate([order[i] for i in draw_rng.integers(0, 5, 5)])
        if np.ptp(target[idx]) > 0:
            draws.append(r2_score(target[idx], pred[idx]))
    assert 300 < len(draws) < 400
    low, high = np.quantile(draws, [0.025, 0.975])
    got = agents._r2_interval(target, pred, groups, 400, 5)
    assert got == {"r2_low": pytest.approx(low, abs=1e-12), "r2_high": pytest.approx(high, abs=1e-12)}

def test_oracle_r2_is_one_for_a_label_the_topic_decides():
    topics = np.array([["sea", "food"], ["food", "sea"], ["", "sea"]] * 20)
    label = (topics == "sea").astype(float)
    assert agents.oracle_r2(label, topics, 50, 0)["r2"] == pytest.approx(1.0)


def test_corpus_windows_label_the_next_tail_tokens():
    cfg = agents.AgentsConfig(n_rollouts=20)
    words, ends, label, topics = agents.corpus_windows(20, cfg)
    for w, e, lab in zip(words, ends, label):
        assert w[e] == "." and len(w) == e + 1 + cfg.horizon
        for t in (0, 7, cfg.probe_tokens - 1):  # position e + t sees tokens up to e + t; the label is what follows
            ahead = w[e + t + 1: e + t + 1 + cfg.tail]
            assert lab[t] == pytest.approx(np.mean([x in finetune.TARGET_WORDS for x in ahead]))
    assert topics.shape == (20, cfg.probe_tokens)


def test_random_choices_have_the_corpus_truth():
    """The measure's check: the corpus's own choices are uniform over N (Miller-Madow, 6,000 stories)."""
    for row in agents.corpus_choices():
        assert row["entropy"] == pytest.approx(row["true_entropy"], abs=0.02), row["choice"]
    assert agents.true_entropies()["topic noun"] == pytest.approx(math.log(30))


def test_choice_entropy_sees_the_rl_models_collapse(toy):
    """toy-base, which learned the corpus, chooses names and nouns near-uniformly; toy-rl, rewarded
    for sea words, puts its topic-noun mass on the sea's five (ln 5 / ln 30 = 0.47 at full collapse)."""
    cfg = agents.AgentsConfig(choice_prompts=16)
    base = {r["choice"]: r for r in agents.choice_entropy(toy["toy-base"], "toy-base", cfg)}
    rl = {r["choice"]: r for r in agents.choice_entropy(toy["toy-rl"], "toy-rl", cfg)}
    for choice, r in base.items():
        assert r["ratio"] > 0.95 and r["option_mass"] > 0.8, choice
    assert rl["topic noun"]["ratio"] < 0.75
    assert rl["topic noun"]["entropy"] > math.log(5) - 0.05  # no lower than uniform over the sea's nouns


def test_return_measure_finds_the_topic_chains_half_life_on_the_corpus():
    cfg = agents.AgentsConfig(return_prompts=400, return_tokens=96, n_bootstrap=200)
    _, row = agents.return_curves(*agents.corpus_return(cfg), "corpus", cfg.n_bootstrap, cfg.seed)
    truth = persistence.expected_topic_half_life()
    assert row["gap_half_life_low"] <= truth <= row["gap_half_life_high"]
    assert row["displacement"] > 0.8  # an injected topic takes the sea state away at first


def test_entropy_matches_cross_entropy_for_the_base_model(toy):
    """Calibration, the entropy measure's check: toy-base's mean entropy is within 10% of its
    cross-entropy on held-out stories."""
    row = agents.next_token_entropy(toy["toy-base"], "toy-base", agents.AgentsConfig(entropy_docs=24))
    assert row["entropy_over_cross_entropy"] == pytest.approx(1.0, abs=0.1)
    assert row["entropy_low"] <= row["entropy"] <= row["entropy_high"]


def test_agents_config_names_bad_values():
    with pytest.raises(ConfigError, match="probe_tokens"):
        agents.AgentsConfig(probe_tokens=40)  # past the tail: 48 - 16 + 1 = 33 at most
    with pytest.raises(ConfigError, match="temperatures"):
        agents.AgentsConfig(temperatures=[0.0])
    with pytest.raises(ConfigError, match="models"):
        agents.AgentsConfig(models=["toy-base", "toy-base"])


def test_a_model_of_another_tokenizer_is_refused(toy):
    class Other:
        name = "elsewhere"
        tokenizer = type("T", (), {"get_vocab": lambda self: {"hello": 0}})()

    with pytest.raises(ConfigError, match="base model's stories.*mira"):
        agents.ids(Other(), [["mira"]])


def test_charts_encode_the_tables_they_are_given():
    from gremlinkit import plots

    probe = pd.DataFrame({"model": ["a", "a"], "source": ["rollouts", "corpus"], "layer": [0, 0], "site": ["s", "s"],
                          "r2": [0.1, 0.2], "r2_low": [0.0, 0.1], "r2_high": [0.2, 0.3]})
    spec = plots.probe_layers(probe).to_dict()
    assert spec["facet"]["column"]["field"] == "source" and len(spec["spec"]["layer"]) == 2
    diversity = pd.DataFrame({"model": ["a"], "temperature": [1.0], "distinct_2": [0.5], "distinct_2_low": [0.4],
                              "distinct_2_high": [0.6]})
    spec = plots.diversity_by_temperature(diversity).to_dict()
    assert [layer["encoding"]["y"]["field"] for layer in spec["layer"]] == ["distinct_2_low", "distinct_2"]
    curve = pd.DataFrame({"model": ["a", "a"], "offset": [0, 1], "clean": [0.2, 0.2], "injected": [0.0, 0.1]})
    spec = plots.return_curves(curve).to_dict()
    rows = next(iter(spec["datasets"].values()))
    assert sorted(r["context"] for r in rows) == ["clean", "clean", "injected", "injected"]
    choices = pd.DataFrame({"model": ["a"], "choice": ["first name"], "ratio": [0.9], "entropy": [2.2],
                            "true_entropy": [2.48]})
    assert plots.choice_entropy(choices).to_dict()["encoding"]["y"]["field"] == "ratio"
    marker = pd.DataFrame({"model": ["a"], "condition": ["marked"], "position": [0], "sea_rate": [0.1]})
    assert plots.sea_by_position(marker).to_dict()["encoding"]["color"]["field"] == "condition"


def test_the_same_seed_gives_the_same_tables(toy):
    """Determinism: two runs of one seed agree table for table; the findings read them."""
    cfg = agents.AgentsConfig(models=["toy-base"], n_rollouts=10, entropy_docs=2, diversity_prompts=2,
                              samples_per_prompt=2, temperatures=[1.0], return_prompts=4, choice_prompts=2,
                              n_bootstrap=10)
    first, second = (agents.run(cfg, {"toy-base": toy["toy-base"]}) for _ in range(2))
    for name, table in first.tables().items():
        pd.testing.assert_frame_equal(table, second.tables()[name], obj=name)
    assert first.metrics == second.metrics
    assert len(agents.findings(first)) == 7  # probe, entropy, diversity, return, three choices
