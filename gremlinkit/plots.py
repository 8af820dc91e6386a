"""Altair charts: pure functions from a tidy DataFrame to an ``alt.Chart``; nothing is shown or saved.

The one exception is :func:`render_offline`, which notebooks call once: altair's default renderer
writes HTML that fetches vega from a CDN, so charts stay blank on an offline machine and in saved
notebooks opened later. The SVG renderer draws each chart in the kernel with vl-convert instead.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from gremlinkit.results import own_feature_rows


def render_offline() -> None:
    """Draw charts as SVG in the kernel (vl-convert), so they show without network access."""
    alt.renderers.enable("svg")


def _lexicon_rates(samples: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Long form of the luigi_rate / waluigi_rate columns: keys..., lexicon, rate."""
    long = samples.melt(id_vars=keys, value_vars=["luigi_rate", "waluigi_rate"], var_name="lexicon", value_name="rate")
    return long.assign(lexicon=long.lexicon.str.replace("_rate", "", regex=False))


POLE_COLORS = ["#2a9d8f", "#7b2cbf"]  # negative pole (persona world: Luigi), positive pole
PERSONA_COLORS = alt.Scale(domain=["luigi", "waluigi"], range=POLE_COLORS)


def persona_rates(samples: pd.DataFrame, *, title: str = "Persona lexicon in generated text") -> alt.Chart:
    """Mean Luigi- and Waluigi-word rate of continuations, grouped by the prompt's persona."""
    return (
        alt.Chart(_lexicon_rates(samples, ["prompt_id", "persona"]), title=title)
        .mark_bar()
        .encode(
            x=alt.X("lexicon:N", title=None),
            y=alt.Y("mean(rate):Q", title="fraction of words"),
            color=alt.Color("lexicon:N", scale=PERSONA_COLORS),
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


def decay_curves(scan: pd.DataFrame, *, features=None, title: str = "Effect of one edit, by lag") -> alt.Chart:
    """Mean delta of each edited feature against lag, one line per feature, faceted by model and mode;
    ``features`` picks which (default: every scanned one)."""
    own = own_feature_rows(scan)
    if features is not None:
        own = own[own.feature.isin(list(features))]
    curves = own.groupby(["model", "mode", "feature", "lag"], as_index=False).delta.mean()
    curves["feature"] = curves.feature.astype(str)
    return (
        alt.Chart(curves, title=title)
        .mark_line(point=False)
        .encode(
            x=alt.X("lag:Q", title="tokens after the edit"),
            y=alt.Y("delta:Q", title="mean change in the feature"),
            color=alt.Color("feature:N"),
            row=alt.Row("model:N"),
            column=alt.Column("mode:N"),
            tooltip=["model", "mode", "feature", "lag", alt.Tooltip("delta:Q", format=".4f")],
        )
    )


def half_life_distribution(summary: pd.DataFrame, *, title: str = "Fitted half-lives per model") -> alt.Chart:
    """Each feature's half-life (tokens) with its bootstrap interval, per model and mode."""
    data = summary.assign(feature=summary.feature.astype(str))
    base = alt.Chart(data, title=title).encode(
        y=alt.Y("model:N", title=None),
        yOffset=alt.YOffset("mode:N"),
        color=alt.Color("mode:N"),
        tooltip=["model", "mode", "feature", alt.Tooltip("half_life:Q", format=".2f"),
                 alt.Tooltip("half_life_low:Q", format=".2f"), alt.Tooltip("half_life_high:Q", format=".2f")],
    )
    rules = base.mark_rule(opacity=0.4).encode(x=alt.X("half_life_low:Q", title="half-life (tokens)"),
                                                x2="half_life_high:Q")
    return rules + base.mark_point(filled=True).encode(x="half_life:Q")


def feature_lag_heatmap(scan: pd.DataFrame, *, title: str = "Mean |delta| by feature and lag") -> alt.Chart:
    """Feature x lag heatmap of the mean absolute change, faceted by model and mode."""
    own = own_feature_rows(scan)
    heat = own.assign(abs_delta=own.delta.abs()).groupby(["model", "mode", "feature", "lag"],
                                                         as_index=False).abs_delta.mean()
    heat["feature"] = heat.feature.astype(str)
    return (
        alt.Chart(heat, title=title)
        .mark_rect()
        .encode(
            x=alt.X("lag:O", title="lag"),
            y=alt.Y("feature:N", title="feature"),
            color=alt.Color("abs_delta:Q", title="mean |delta|", scale=alt.Scale(type="symlog")),
            row=alt.Row("model:N"),
            column=alt.Column("mode:N"),
        )
    )


def layer_profile(scores: pd.DataFrame, *, metric: str = "auroc_pooled",
                  title: str = "Trait decodability by layer (held-out templates)") -> alt.Chart:
    """``metric`` against layer, one line per trait and method."""
    data = scores[scores.metric == metric]
    return (
        alt.Chart(data, title=title)
        .mark_line(point=True)
        .encode(
            x=alt.X("layer:O", title="layer (blocks.L.hook_resid_post)"),
            y=alt.Y("value:Q", title=metric, scale=alt.Scale(domain=[0.4, 1.0])),
            color=alt.Color("trait:N"),
            strokeDash=alt.StrokeDash("method:N"),
            tooltip=["trait", "method", "layer", alt.Tooltip("value:Q", format=".3f")],
        )
    )


def dose_response(dose: pd.DataFrame, *, metrics: tuple[str, ...] = ("negative_rate", "positive_rate"),
                  title: str = "Steering along the trait direction (toward its positive pole)") -> alt.Chart:
    """Mean and 95% CI over prompts against the steering coefficient, one panel per metric group
    (with no sweep, the title says so over an empty chart)."""
    data = dose[dose.metric.isin(metrics)]
    if not len(data):
        return alt.Chart(pd.DataFrame({"x": []}), title=f"{title}: no steering sweep").mark_point()
    base = alt.Chart(data, title=title).encode(
        x=alt.X("coefficient:Q", title="steering coefficient"), color=alt.Color("metric:N"))
    band = base.mark_errorband().encode(y=alt.Y("low:Q", title="mean over prompts"), y2="high:Q")
    return band + base.mark_line(point=True).encode(y="mean:Q", tooltip=["metric", "coefficient",
                                                                          alt.Tooltip("mean:Q", format=".3f")])


def sign_histograms(values: pd.DataFrame, *, bins: int = 40,
                    title: str = "Values of one-sign units on the reference stories") -> alt.Chart:
    """Histogram of each unit's values (long table: unit, value), binned here, with zero marked."""
    import numpy as np

    rows = []
    for unit, g in values.groupby("unit", sort=False):
        counts, edges = np.histogram(g.value.to_numpy(), bins=bins)
        rows += [{"unit": unit, "start": float(a), "end": float(b), "count": int(c)}
                 for a, b, c in zip(edges[:-1], edges[1:], counts)]
    base = alt.Chart(pd.DataFrame(rows))
    bars = base.mark_rect().encode(x=alt.X("start:Q", title="value"), x2="end:Q",
                                   y=alt.Y("count:Q", title="positions"), y2=alt.datum(0))
    zero = base.mark_rule(color="red").encode(x=alt.datum(0))
    return alt.layer(bars, zero).properties(width=220, height=120).facet(
        facet=alt.Facet("unit:N", title=None), columns=3, title=title)


def search_trajectories(trajectories: pd.DataFrame, *, title: str = "Flip search: best sign * value by step"
                        ) -> alt.Chart:
    """Best objective so far against step, GCG against random search, one panel per unit (below 0 = flipped)."""
    curves = trajectories.groupby(["unit", "method", "step"], as_index=False).best.mean()
    base = alt.Chart(curves)
    lines = base.mark_line().encode(
        x=alt.X("step:Q"), y=alt.Y("best:Q", title="sign * value (mean over restarts)"),
        color=alt.Color("method:N"))
    zero = base.mark_rule(strokeDash=[4, 4]).encode(y=alt.datum(0))
    return alt.layer(lines, zero).properties(width=220, height=140).facet(
        facet=alt.Facet("unit:N", title=None), columns=3, title=title)


def flip_success(curve: pd.DataFrame, *, title: str = "Searches flipped within a budget of steps") -> alt.Chart:
    """Success rate against the step budget, GCG against random search (``signflip.success_by_budget``)."""
    return (
        alt.Chart(curve, title=title)
        .mark_line(interpolate="step-after")
        .encode(x=alt.X("steps:Q", title="budget (steps of batch_candidates prompts)"),
                y=alt.Y("success:Q", title="fraction flipped", scale=alt.Scale(domain=[0, 1])),
                color=alt.Color("method:N"), tooltip=["method", "steps", alt.Tooltip("success:Q", format=".2f")])
        .properties(width=320, height=180)
    )


def behavior_bars(calls: pd.DataFrame, *, title: str = "Behaviour Y = Luigi rate - Waluigi rate") -> alt.Chart:
    """Mean Y per condition with its 95% interval, coloured by the -Y / 0 / +Y call (with no
    behaviour scored, the title says so over an empty chart)."""
    if not len(calls):
        return alt.Chart(pd.DataFrame({"x": []}), title=f"{title}: no behaviour scored").mark_point()
    base = alt.Chart(calls, title=title).encode(y=alt.Y("condition:N", sort=None, title=None))
    bars = base.mark_bar().encode(x=alt.X("mean_y:Q", title="Y (mean over prompts)"), color=alt.Color("call:N"))
    return bars + base.mark_rule().encode(x="low:Q", x2="high:Q")


def persistent_counts(counts: pd.DataFrame, *, title: str = "Persistent features per model (95% Wilson CI)"
                      ) -> alt.Chart:
    """Fraction of scanned features that are persistent, per model, with its interval."""
    base = alt.Chart(counts, title=title).encode(x=alt.X("model:N", sort=None, title=None))
    bars = base.mark_bar().encode(y=alt.Y("fraction:Q", title="persistent fraction", scale=alt.Scale(domain=[0, 1])),
                                  tooltip=["model", "persistent", "scanned"])
    return bars + base.mark_rule().encode(y="fraction_low:Q", y2="fraction_high:Q")


def planted_dose(planted: pd.DataFrame, feature: int, *,
                 title: str = "Planted persistence: measured half-life against the truth") -> alt.Chart:
    """Per planted organism (by its chain's eigenvalue): each seed's fitted half-life of ``feature``
    (filled when detected), and the planted truth as a line."""
    data = planted[planted.feature == feature]
    truth = data.groupby("eigenvalue", as_index=False).truth_half_life.first()
    base = alt.Chart(data, title=title).encode(x=alt.X("eigenvalue:Q", title="planted eigenvalue per sentence"))
    seeds = base.mark_point(size=60).encode(
        y=alt.Y("half_life:Q", title="half-life (tokens)"), shape=alt.Shape("detected:N"),
        color=alt.Color("detected:N"), tooltip=["model", "seed", alt.Tooltip("half_life:Q", format=".1f"),
                                                 alt.Tooltip("p_value:Q", format=".2g"), "detected"])
    line = alt.Chart(truth).mark_line(color="gray", strokeDash=[4, 3]).encode(x="eigenvalue:Q", y="truth_half_life:Q")
    return line + seeds


def rl_dose(dose: pd.DataFrame, *, title: str = "Persistence against RL dose, horizon and training method"
            ) -> alt.Chart:
    """The persistence statistic (census mean tail ratio, 95% bootstrap interval) per organism: on-policy
    RL against its number of steps, a line per reward horizon (toy-base at 0 steps on each), and every
    organism by training method."""
    y = alt.Y("tail_ratio:Q", title="mean tail ratio (tail effect / direct effect)")
    tips = ["model", "method", "rl_steps", "horizon", alt.Tooltip("reward:Q", format=".3f"),
            alt.Tooltip("kl_to_base:Q", format=".3f"), alt.Tooltip("tail_ratio:Q", format=".3f"), "persistent"]
    rl = dose[dose.method == "on-policy RL"]
    base = dose[dose.method == "base"]
    series = pd.concat([rl] + [base.assign(horizon=h) for h in sorted(rl.horizon.unique())], ignore_index=True)
    steps = alt.Chart(series, title="against on-policy RL steps").encode(
        x=alt.X("rl_steps:Q", title="RL steps", scale=alt.Scale(type="symlog")), color=alt.Color("horizon:N"))
    left = steps.mark_line(point=True).encode(y=y, tooltip=tips) + \
        steps.mark_rule().encode(y="tail_ratio_low:Q", y2="tail_ratio_high:Q")
    methods = alt.Chart(dose, title="by training method").encode(
        x=alt.X("model:N", sort=None, title=None), color=alt.Color("method:N"))
    right = methods.mark_point(filled=True, size=60).encode(y=y, tooltip=tips) + \
        methods.mark_rule().encode(y="tail_ratio_low:Q", y2="tail_ratio_high:Q")
    return alt.hconcat(left, right, title=title)


def localisation(loc: pd.DataFrame, *, title: str = "Where fine-tuning changed the model") -> alt.Chart:
    """Relative change per block of weights and of the residual stream, per fine-tuned model."""
    return (
        alt.Chart(loc, title=title)
        .mark_line(point=True)
        .encode(
            x=alt.X("part:N", sort=None, title=None),
            y=alt.Y("relative_change:Q", title="relative change"),
            color=alt.Color("model:N"),
            column=alt.Column("measure:N", title=None),
            tooltip=["model", "measure", "part", alt.Tooltip("relative_change:Q", format=".4f")],
        )
        .resolve_scale(y="independent")
    )


def token_heatmap(contexts: pd.DataFrame, *, title: str = "Top-activating contexts") -> alt.Chart:
    """Tokens around each context's peak, coloured by the feature's activation (long table from
    ``explore.feature_contexts``: context, offset, token, activation)."""
    base = alt.Chart(contexts, title=title).encode(
        x=alt.X("offset:O", title="tokens from the peak"),
        y=alt.Y("context:O", title="context (strongest first)"),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("activation:Q", scale=alt.Scale(scheme="oranges"), title="activation"),
        tooltip=["context", "offset", "token", alt.Tooltip("activation:Q", format=".3f")])
    words = base.mark_text(fontSize=10).encode(text="token:N")
    return alt.layer(cells, words).properties(width=alt.Step(56), height=alt.Step(20))


def activation_histogram(values: pd.DataFrame, *, bins: int = 30,
                         title: str = "Non-zero activations on held-out tokens") -> alt.Chart:
    """Histogram of a feature's non-zero activations (``explore.activation_values``)."""
    return (
        alt.Chart(values, title=title)
        .mark_bar()
        .encode(x=alt.X("activation:Q", bin=alt.Bin(maxbins=bins), title="activation"),
                y=alt.Y("count():Q", title="tokens"))
        .properties(width=280, height=160)
    )


def logit_effect_bars(effects: pd.DataFrame, *,
                      title: str = "Next-token log-prob the feature adds (ablated at its peaks)") -> alt.Chart:
    """Tokens the feature promotes and suppresses most (``explore.logit_effects``)."""
    return (
        alt.Chart(effects, title=title)
        .mark_bar()
        .encode(x=alt.X("effect:Q", title="mean change in log-prob (nats)"),
                y=alt.Y("token:N", sort="-x", title=None),
                color=alt.Color("direction:N", scale=alt.Scale(domain=["promotes", "suppresses"],
                                                               range=["#2a9d8f", "#e76f51"])),
                tooltip=["token", "direction", alt.Tooltip("effect:Q", format=".3f")])
        .properties(width=280)
    )


def steering_rates(samples: pd.DataFrame, *, poles: tuple[str, str] = ("negative", "positive"),
                   title: str = "Trait lexicon: baseline and steered") -> alt.Chart:
    """Mean rate of each pole's lexicon words in paired samples per condition
    (``explore.steer_samples``); ``poles`` names the (negative, positive) lexicons in the legend."""
    long = samples.melt(id_vars=["sample", "condition"], value_vars=["negative_rate", "positive_rate"],
                        var_name="lexicon", value_name="rate")
    long = long.assign(lexicon=long.lexicon.map({"negative_rate": poles[0], "positive_rate": poles[1]}))
    return (
        alt.Chart(long, title=title)
        .mark_bar()
        .encode(x=alt.X("condition:N", sort=["baseline", "steered"], title=None),
                y=alt.Y("mean(rate):Q", title="fraction of words"),
                color=alt.Color("lexicon:N", scale=alt.Scale(domain=list(poles), range=POLE_COLORS)),
                xOffset="lexicon:N",
                tooltip=["condition", "lexicon", alt.Tooltip("mean(rate):Q", format=".3f")])
        .properties(width=200, height=160)
    )


def feature_decay(curves: pd.DataFrame, *, title: str = "One feature's edit, followed by lag") -> alt.Chart:
    """Mean delta +- one standard error against lag, one line per model, one panel per mode
    (``explore.feature_curves``)."""
    data = curves.assign(low=curves.delta - curves["sem"], high=curves.delta + curves["sem"])
    base = alt.Chart(data).encode(x=alt.X("lag:Q", title="tokens after the edit"), color=alt.Color("model:N"))
    band = base.mark_area(opacity=0.2).encode(y=alt.Y("low:Q", title="mean change in the feature"), y2="high:Q")
    line = base.mark_line(point=True).encode(y="delta:Q", tooltip=["model", "mode", "lag",
                                                                   alt.Tooltip("delta:Q", format=".4f")])
    return alt.layer(band, line).properties(width=260, height=160).facet(
        column=alt.Column("mode:N", title=None), title=title)


def probe_layers(probe: pd.DataFrame, *, title: str = "What a linear probe reads at each layer") -> alt.Chart:
    """Out-of-fold R² per layer with its interval, per model: the value probe on the model's own
    rollouts beside the positive control on the corpus (``agents.AgentsResult.probe``)."""
    base = alt.Chart(probe).encode(x=alt.X("layer:O", title="layer (0: embeddings)"), color=alt.Color("model:N"))
    line = base.mark_line(point=True).encode(
        y=alt.Y("r2:Q", title="held-out R²"),
        tooltip=["model", "source", "site", alt.Tooltip("r2:Q", format=".3f")])
    band = base.mark_errorbar().encode(y="r2_low:Q", y2="r2_high:Q")
    return alt.layer(band, line, data=probe).facet(column=alt.Column("source:N", title=None), title=title)


def diversity_by_temperature(diversity: pd.DataFrame, *, measure: str = "distinct_2",
                             title: str = "Diversity of samples per prompt against temperature") -> alt.Chart:
    """A diversity measure per model and temperature with its interval; the corpus is one point
    at temperature 1 (``agents.AgentsResult.diversity``)."""
    base = alt.Chart(diversity).encode(x=alt.X("temperature:Q"), color=alt.Color("model:N"))
    line = base.mark_line(point=True).encode(
        y=alt.Y(f"{measure}:Q", title=measure.replace("_", "-")),
        tooltip=["model", "temperature", alt.Tooltip(f"{measure}:Q", format=".3f")])
    band = base.mark_errorbar().encode(y=f"{measure}_low:Q", y2=f"{measure}_high:Q")
    return alt.layer(band, line, title=title)


def return_curves(curve: pd.DataFrame, *, title: str = "Sea-word rate after the context, with and without an "
                  "off-world sentence") -> alt.Chart:
    """Per model, the favoured state's word rate per offset, clean and injected (``return_curve``)."""
    long = curve.melt(id_vars=["model", "offset"], value_vars=["clean", "injected"], var_name="context",
                      value_name="rate")
    return _sea_rate_lines(long, x=alt.X("offset:Q", title="tokens after the context"), y="rate", color="context",
                           title=title)


def _sea_rate_lines(data: pd.DataFrame, *, x: alt.X, y: str, color: str, title: str) -> alt.Chart:
    """One small panel per model: a sea-word rate over tokens, one line per ``color``."""
    return (
        alt.Chart(data, title=title)
        .mark_line()
        .encode(x=x, y=alt.Y(f"{y}:Q", title="sea-word rate"), color=alt.Color(f"{color}:N"),
                facet=alt.Facet("model:N", columns=3))
        .properties(width=180, height=120)
    )


def choice_entropy(choices: pd.DataFrame, *, title: str = "Random choices: entropy against the truth") -> alt.Chart:
    """Each model's entropy over a choice's options as a share of the true ``ln N`` (1: uniform)."""
    return (
        alt.Chart(choices, title=title)
        .mark_bar()
        .encode(x=alt.X("model:N", title=None), y=alt.Y("ratio:Q", title="entropy / ln N"),
                color=alt.Color("model:N"), column=alt.Column("choice:N", title=None),
                tooltip=["model", "choice", alt.Tooltip("entropy:Q", format=".3f"),
                         alt.Tooltip("true_entropy:Q", format=".3f")])
    )


def sea_by_position(curve: pd.DataFrame, *, title: str = "Sea-word rate over position, with and without the "
                    "marker") -> alt.Chart:
    """Per model, the reward's word rate at each generated position, marked and unmarked prompts."""
    return _sea_rate_lines(curve, x=alt.X("position:Q", title="generated token"), y="sea_rate", color="condition",
                           title=title)
