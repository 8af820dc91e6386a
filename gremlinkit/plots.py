"""Altair charts: pure functions from a tidy DataFrame to an ``alt.Chart``; nothing is shown or saved."""

from __future__ import annotations

import altair as alt
import pandas as pd


def persona_rates(samples: pd.DataFrame, *, title: str = "Persona lexicon in generated text") -> alt.Chart:
    """Mean Luigi- and Waluigi-word rate of continuations, grouped by the prompt's persona."""
    long = samples.melt(id_vars=["prompt_id", "persona"], value_vars=["luigi_rate", "waluigi_rate"],
                        var_name="lexicon", value_name="rate")
    long["lexicon"] = long.lexicon.str.replace("_rate", "", regex=False)
    return (
        alt.Chart(long, title=title)
        .mark_bar()
        .encode(
            x=alt.X("lexicon:N", title=None),
            y=alt.Y("mean(rate):Q", title="fraction of words"),
            color=alt.Color("lexicon:N", scale=alt.Scale(domain=["luigi", "waluigi"], range=["#2a9d8f", "#7b2cbf"])),
            column=alt.Column("persona:N", title="prompted persona"),
            tooltip=["persona", "lexicon", alt.Tooltip("mean(rate):Q", format=".3f")],
        )
    )


def feature_frequencies(summary: pd.DataFrame, *, top: int = 40,
                        title: str = "SAE features: firing frequency and best-matching label") -> alt.Chart:
    """Bars of the ``top`` most frequent features, coloured by the label they fire on most purely."""
    data = summary.head(top).assign(feature=lambda d: d.feature.astype(str))
    return (
        alt.Chart(data, title=title)
        .mark_bar()
        .encode(
            x=alt.X("feature:N", sort="-y", title="feature"),
            y=alt.Y("frequency:Q", title="fraction of tokens"),
            color=alt.Color("label:N", title="label"),
            tooltip=["feature", "label", "label_value", alt.Tooltip("purity:Q", format=".2f"),
                     alt.Tooltip("frequency:Q", format=".3f")],
        )
    )
