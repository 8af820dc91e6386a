"""The statistics every experiment shares: seeded bootstrap intervals, class separation, and
half-life fits with the tail test of persistence scans.

Every interval here is a 95% percentile bootstrap, and every one takes its seed from the caller,
so the same seed gives the same table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.stats import bootstrap, ttest_1samp
from sklearn.metrics import roc_auc_score


def statistic_ci(values: np.ndarray, statistic, seed: int, n_resamples: int = 1000) -> tuple[float, float]:
    """95% percentile bootstrap interval of ``statistic`` (e.g. ``np.mean``) over ``values``
    (scipy's bootstrap); a constant sample's interval is that constant."""
    values = np.asarray(values, dtype=float)
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0])
    res = bootstrap((values,), statistic, n_resamples=n_resamples, method="percentile", random_state=seed)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mean_ci(values: np.ndarray, seed: int) -> tuple[float, float]:
    """95% bootstrap interval of the mean (1,000 resamples)."""
    return statistic_ci(values, np.mean, seed)


def median_ci(values: np.ndarray, seed: int) -> tuple[float, float]:
    """95% bootstrap interval of the median (1,000 resamples)."""
    return statistic_ci(values, np.median, seed)


def mean_interval(values: np.ndarray, n_bootstrap: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the mean of ``values`` over ``n_bootstrap`` resamples, drawn with
    numpy directly (fast enough for the thousands of small samples a census makes)."""
    values = np.asarray(values, dtype=float)
    boots = values[np.random.default_rng(seed).integers(0, len(values), size=(n_bootstrap, len(values)))].mean(1)
    low, high = np.quantile(boots, [0.025, 0.975])
    return float(low), float(high)


def separation(score: np.ndarray, y: np.ndarray, groups: np.ndarray, pair_ids: np.ndarray) -> dict[str, float]:
    """How well ``score`` separates labels ``y`` (1 should score higher):

    * ``auroc_pooled``: AUROC over every row at once (one threshold for all groups);
    * ``auroc_within_template``: AUROC within each group (template), averaged;
    * ``paired_accuracy``: the fraction of matched pairs (rows sharing a ``pair_ids`` value, in any
      row order) whose label-1 row scores higher.
    """
    within = [roc_auc_score(y[groups == t], score[groups == t]) for t in np.unique(groups)]
    wide = pd.DataFrame({"pair": pair_ids, "label": y, "score": score}).pivot(index="pair", columns="label",
                                                                             values="score")
    return {"auroc_pooled": float(roc_auc_score(y, score)), "auroc_within_template": float(np.mean(within)),
            "paired_accuracy": float((wide[1] > wide[0]).mean())}


# --------------------------------------------------------------------------- half-lives

ATOL = 1e-5  # float noise between differently shaped batches; smaller effects count as zero


def fit_half_life(curve: np.ndarray, start: int) -> float:
    """Least-squares half-life (tokens) of ``A * 2**(-(lag - start) / h)`` over lags start..H.

    Variable projection: for a given ``h`` the best ``A`` is linear least squares, which leaves a
    bounded one-dimensional search over ``log h`` (``scipy.optimize.minimize_scalar``).
    """
    horizon = len(curve) - 1
    lags = np.arange(len(curve) - start, dtype=float)
    y = curve[start:]
    if not np.any(np.abs(y) > ATOL):
        return 0.0

    def sse(log_h: float) -> float:
        e = np.exp2(-lags / np.exp(log_h))
        a = (y @ e) / (e @ e)
        return float(((y - a * e) ** 2).sum())

    res = minimize_scalar(sse, bounds=(np.log(0.05), np.log(10.0 * horizon)), method="bounded",
                          options={"xatol": 1e-5})
    return float(np.exp(res.x))


def tail_start(horizon: int) -> int:
    return max(1, horizon // 4)


def tail_test(tails: np.ndarray, sign: float) -> float:
    """One-sided p-value that the mean of per-prompt ``tails`` has the edit's ``sign`` (1 when the
    edit had no direct effect, or the tails do not vary)."""
    if sign == 0:
        return 1.0
    if len(tails) < 2 or np.ptp(tails) <= ATOL:  # no spread to test against: all or nothing
        return 0.0 if np.mean(tails) * sign > ATOL else 1.0
    return float(ttest_1samp(sign * tails, 0.0, alternative="greater").pvalue)


def half_life(mat: np.ndarray, fit_tail: bool) -> float:
    """Half-life of the mean curve of ``mat`` (units, lags): fitted to its tail (lags from
    `tail_start`) when ``fit_tail``, else to the whole curve."""
    return fit_half_life(mat.mean(0), tail_start(mat.shape[1] - 1) if fit_tail else 0)


def half_life_interval(mat: np.ndarray, fit_tail: bool, n_bootstrap: int, rng: np.random.Generator
                       ) -> tuple[float, float]:
    """2.5-97.5% range of `half_life` over ``n_bootstrap`` resamples of ``mat``'s rows, drawn from
    ``rng`` (the caller's seeded generator: one run's features draw from one stream)."""
    boots = rng.integers(0, len(mat), size=(n_bootstrap, len(mat)))
    low, high = np.nanquantile([half_life(mat[b], fit_tail) for b in boots], [0.025, 0.975])
    return float(low), float(high)
