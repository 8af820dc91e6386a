"""The statistics every experiment shares: seeded bootstrap intervals and class separation.

Every interval here is a 95% percentile bootstrap, and every one takes its seed from the caller,
so the same seed gives the same table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import bootstrap
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
