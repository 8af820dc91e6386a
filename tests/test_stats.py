"""The shared statistics against independent computations: numpy resampling by hand, scikit-learn's
AUROC, pair orderings counted by hand, planted decays and scipy's t-test."""

import numpy as np
import pytest
from scipy.stats import bootstrap
from sklearn.metrics import roc_auc_score

from gremlinkit import stats


def test_mean_and_median_intervals_are_scipys_percentile_bootstrap_with_the_callers_seed():
    values = np.array([0.3, 1.2, -0.4, 2.2, 0.9, 1.7, 0.1, 0.8])
    for fn, statistic in ((stats.mean_ci, np.mean), (stats.median_ci, np.median)):
        for seed in (0, 7):
            res = bootstrap((values,), statistic, n_resamples=1000, method="percentile", random_state=seed)
            assert fn(values, seed) == (res.confidence_interval.low, res.confidence_interval.high)
        wide = np.random.default_rng(5).normal(size=101)
        assert fn(wide, 0) != fn(wide, 1)  # the seed is used, not ignored
        low, high = fn(values, 0)
        assert low < statistic(values) < high
    assert stats.mean_ci(np.full(5, 2.5), 0) == (2.5, 2.5)  # a constant sample: its value, not an error


def test_mean_interval_is_the_quantiles_of_resampled_means():
    values = np.array([1.0, 4.0, 2.0, 8.0, 5.0])
    idx = np.random.default_rng(3).integers(0, 5, size=(400, 5))
    expected = np.quantile(values[idx].mean(1), [0.025, 0.975])
    assert stats.mean_interval(values, 400, seed=3) == pytest.approx(tuple(expected), abs=0)
    low, high = stats.mean_interval(values, 400, seed=3)
    assert values.min() <= low < values.mean() < high <= values.max()


def test_separation_against_sklearn_and_counted_pairs():
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 30)
    groups = np.repeat(["a", "b", "c"], 20)
    pair_ids = np.repeat(np.arange(30), 2)
    score = y * 0.8 + rng.normal(size=60) * 0.6 + (groups == "c") * 2.0  # template c sits higher
    s = stats.separation(score, y, groups, pair_ids)
    assert s["auroc_pooled"] == pytest.approx(roc_auc_score(y, score))
    assert s["auroc_within_template"] == pytest.approx(np.mean([roc_auc_score(y[groups == g], score[groups == g])
                                                                for g in "abc"]))
    ordered = sum(score[2 * i + 1] > score[2 * i] for i in range(30)) / 30
    assert s["paired_accuracy"] == pytest.approx(ordered)
    # A template offset lowers the pooled AUROC, never the within-template one.
    assert s["auroc_pooled"] < s["auroc_within_template"]


def test_interval_edge_cases_by_hand():
    assert stats.mean_ci(np.array([3.0]), 0) == (3.0, 3.0)  # one value: its own interval
    # A sample whose range is exactly 1 is not constant: it gets a real interval.
    low, high = stats.mean_ci(np.array([0.0, 1.0, 0.0, 1.0, 1.0]), 0)
    assert 0.0 <= low < 0.6 < high <= 1.0 and low < high
    # Booleans (a fraction of features, say) are read as 0/1.
    flags = np.array([True, False, True, True, False, True])
    assert stats.mean_ci(flags, 4) == stats.mean_ci(flags.astype(float), 4)
    wide = np.random.default_rng(5).normal(size=101)
    res = bootstrap((wide,), np.median, n_resamples=1000, method="percentile", random_state=2)
    assert stats.median_ci(wide, 2) == (res.confidence_interval.low, res.confidence_interval.high)


def test_a_tied_pair_is_not_ordered():
    score = np.array([0.5, 0.5, 0.1, 0.9])  # pair 0 tied, pair 1 ordered
    s = stats.separation(score, np.array([0, 1, 0, 1]), np.array([0, 0, 0, 0]), np.array([0, 0, 1, 1]))
    assert s["paired_accuracy"] == 0.5


# --------------------------------------------------------------------------- half-lives


def test_fit_half_life_recovers_a_planted_decay_from_where_it_starts():
    lags = np.arange(41)
    assert stats.fit_half_life(3.0 * 2 ** (-lags / 5.0), 0) == pytest.approx(5.0, rel=1e-3)
    # A fast component that is over by lag 10: fitting from there sees the slow one alone.
    two = 10.0 * 2 ** (-lags / 0.5) + 2 ** (-(lags - 10) / 12.0) * (lags >= 10)
    assert stats.fit_half_life(two, 10) == pytest.approx(12.0, rel=1e-3)
    assert stats.fit_half_life(np.zeros(20), 0) == 0.0
    assert stats.fit_half_life(np.full(20, stats.ATOL / 2), 0) == 0.0  # float noise is no effect
    assert stats.fit_half_life(np.full(20, stats.ATOL), 0) == 0.0  # ... up to ATOL itself
    assert stats.fit_half_life(2 ** (-lags / 0.3), 0) == pytest.approx(0.3, rel=1e-3)  # gone within a token
    assert stats.fit_half_life(np.full(20, 1.0), 0) == pytest.approx(10.0 * 19, rel=1e-3)  # the search's bound


def test_the_tail_starts_a_quarter_of_the_way_and_never_at_the_edit():
    assert [stats.tail_start(h) for h in (1, 2, 3, 4, 7, 8, 32, 96)] == [1, 1, 1, 1, 1, 2, 8, 24]


def test_tail_test_is_scipys_one_sided_t_test_in_the_edits_direction():
    from scipy.stats import ttest_1samp

    tails = np.array([0.3, 0.1, 0.4, -0.05, 0.2])
    assert stats.tail_test(tails, 1.0) == pytest.approx(ttest_1samp(tails, 0.0, alternative="greater").pvalue)
    assert stats.tail_test(tails, -1.0) == pytest.approx(ttest_1samp(-tails, 0.0, alternative="greater").pvalue)
    assert stats.tail_test(tails, 0.0) == 1.0  # no direct effect: nothing to persist
    assert stats.tail_test(np.full(4, 0.5), 1.0) == 0.0 and stats.tail_test(np.full(4, 0.5), -1.0) == 1.0
    assert stats.tail_test(np.array([0.5]), 1.0) == 0.0 and stats.tail_test(np.array([-0.5]), 1.0) == 1.0
    assert stats.tail_test(np.full(4, stats.ATOL / 2), 1.0) == 1.0  # float noise is not a tail
    two = np.array([0.1, 0.5])  # two prompts already have a spread to test
    assert stats.tail_test(two, 1.0) == pytest.approx(ttest_1samp(two, 0.0, alternative="greater").pvalue)
    assert stats.tail_test(np.array([0.0, stats.ATOL]), 1.0) == 1.0  # a spread of ATOL is float noise too
    assert stats.tail_test(np.full(4, stats.ATOL), 1.0) == 1.0  # and so is a tail of ATOL


def test_half_life_and_its_interval_by_hand():
    lags = np.arange(31)  # horizon 30: the tail starts at lag 7
    rows = np.stack([a * 2 ** (-lags / h) for a, h in ((1.0, 4.0), (2.0, 8.0), (1.5, 6.0), (0.5, 3.0))])
    assert stats.half_life(rows, False) == pytest.approx(stats.fit_half_life(rows.mean(0), 0))
    assert stats.half_life(rows, True) == pytest.approx(stats.fit_half_life(rows.mean(0), 7))
    assert stats.half_life(rows, True) != pytest.approx(stats.half_life(rows, False))
    for fit_tail, start in ((False, 0), (True, 7)):
        low, high = stats.half_life_interval(rows, fit_tail, 50, np.random.default_rng(3))
        boots = np.random.default_rng(3).integers(0, 4, size=(50, 4))
        by_hand = np.nanquantile([stats.fit_half_life(rows[b].mean(0), start) for b in boots], [0.025, 0.975])
        assert (low, high) == pytest.approx(tuple(by_hand))
        assert 3.0 <= low < high <= 8.0  # within the rows' own half-lives
