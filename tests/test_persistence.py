"""Persistence scans against the zoo's truth, causality, a known decay, determinism and resume."""

import dataclasses
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from gremlinkit import plots
from gremlinkit.errors import ConfigError
from gremlinkit.experiments import persistence as ps
from gremlinkit.experiments import zoo_tour


def _cfg(tmp_path, **kw):
    return dataclasses.replace(ps.PersistenceConfig.smoke(), output_dir=str(tmp_path), **kw)


@pytest.fixture(scope="module")
def heldout(toy):
    return zoo_tour.heldout_features(toy, zoo_tour.ZooTourConfig(n_docs=120))


def test_expected_topic_half_life_follows_from_the_chain():
    # Second eigenvalue of the 6-topic switching chain: 1 - 0.2 * 6 / 5 = 0.76 per sentence.
    assert ps.expected_topic_half_life(sentence_tokens=10.0) == pytest.approx(np.log(2) / -np.log(0.76) * 10)
    assert 30 < ps.expected_topic_half_life() < 35


def _planted(curves: dict[int, np.ndarray], n_prompts: int = 200, noise: float = 0.3, seed: int = 0) -> pd.DataFrame:
    """A scan table whose features' mean deltas follow ``curves`` (feature -> curve over lags), with
    Gaussian noise per prompt and lag."""
    rng = np.random.default_rng(seed)
    rows = []
    for f, curve in curves.items():
        delta = curve[None] + rng.normal(0, noise, (n_prompts, len(curve)))
        for p in range(n_prompts):
            rows += [{"model": "m", "mode": "on_policy", "feature": f, "prompt_id": p, "position": 5, "lag": lag,
                      "delta": d, "delta_post": max(d, 0.0), "diverged": True} for lag, d in enumerate(delta[p])]
    return pd.DataFrame(rows)


def test_fit_recovers_a_planted_decay():
    summary = ps.summarize(_planted({1: 2.0 * 2 ** (-np.arange(65) / 12.0)}), n_bootstrap=100)
    row = summary.iloc[0]
    assert row.half_life == pytest.approx(12.0, rel=0.1)
    assert row.half_life_low < 12.0 < row.half_life_high and row.p_value < 1e-6 and row.persistent
    assert not row.half_life_censored


def test_a_tail_of_the_opposite_sign_is_not_persistence():
    """The edit pushes the feature up; afterwards it sits clearly *below* baseline: not persistent."""
    lags = np.arange(33)
    curve = np.where(lags == 0, 5.0, -0.5)
    row = ps.summarize(_planted({1: curve}), n_bootstrap=20).iloc[0]
    assert row.effect_lag0 > 4 and row.tail_effect < -0.4
    assert row.p_value > 0.99 and not row.persistent
    kept = np.where(lags == 0, -5.0, -0.5)  # an ablation whose drop stays: the edit's own sign persists
    flipped = ps.summarize(_planted({1: kept}), n_bootstrap=20).iloc[0]
    assert flipped.p_value < 1e-6 and flipped.persistent


def test_a_half_life_beyond_the_horizon_is_censored_at_the_horizon():
    row = ps.summarize(_planted({1: np.full(33, 1.0)}), n_bootstrap=20).iloc[0]  # no decay at all
    assert row.persistent and row.half_life_censored
    assert row.half_life == 32 and row.half_life_high == 32


def test_benjamini_hochberg_over_the_census_holds_the_false_discovery_rate():
    """200 null features and 20 planted ones: the q-values match an independent BH step-up, the
    planted features are found, and the realised false-positive rate among nulls stays near q."""
    lags = np.arange(25)
    planted = {f: 1.0 * 2 ** (-lags / 20.0) for f in range(20)}
    null = {f: np.where(lags == 0, 1.0, 0.0) for f in range(20, 220)}
    summary = ps.summarize(_planted({**planted, **null}, n_prompts=40, noise=1.0), n_bootstrap=10)
    p = summary.p_value.to_numpy()
    order = np.argsort(p)
    stepped = np.minimum.accumulate((p[order] * len(p) / np.arange(1, len(p) + 1))[::-1])[::-1]
    expected = np.empty_like(p)
    expected[order] = np.minimum(stepped, 1.0)
    np.testing.assert_allclose(summary.q_value, expected, rtol=1e-9)
    is_planted = summary.feature < 20
    assert summary.persistent[is_planted].mean() == 1.0
    assert summary.persistent[~is_planted].mean() <= 0.02
    assert (summary.p_value[~is_planted] < 0.05).mean() > 0.02  # uncorrected, the nulls would pass


def test_the_pre_activation_readout_sees_what_the_top_k_cut_hides(toy):
    """A persistence planted by adding the feature at every later token with a decaying amount
    (2**(-lag/8)) is read back in full from the pre-activation, and mostly lost after the cut."""
    from gremlinkit import interventions as iv

    cfg = ps.PersistenceConfig(features=[0], horizon=24, n_prompts=16, mode="teacher_forced")
    prompts, positions = ps.scan_prompts(cfg, toy)
    feature, start = 100, 10
    rows = []
    for p, prompt in enumerate(prompts):
        edits = [iv.add(feature, 4.0 * 2 ** (-lag / 8.0), pos=start + lag) for lag in range(25)]
        window = slice(start, start + 25)
        base = {k: toy.features([prompt], pre=k == "pre")[0, window, feature] for k in ("pre", "post")}
        edit = {k: toy.features([prompt], interventions=edits, pre=k == "pre")[0, window, feature]
                for k in ("pre", "post")}
        rows += [{"model": "m", "mode": "teacher_forced", "feature": feature, "prompt_id": p, "position": start,
                  "lag": lag, "delta": float(edit["pre"][lag] - base["pre"][lag]),
                  "delta_post": float(edit["post"][lag] - base["post"][lag]), "diverged": False} for lag in range(25)]
    df = pd.DataFrame(rows)
    row = ps.summarize(df, n_bootstrap=20).iloc[0]
    assert row.half_life == pytest.approx(8.0, rel=0.05)
    # Independently: adding a to the code adds a * w_dec / |w_dec| to the stream (the SAE rescales its
    # codes by the decoder norm), which moves the rescaled pre-activation by a * w_enc . w_dec.
    sae = toy.sae
    gain = float((sae.W_enc[:, feature] @ sae.W_dec[feature]).detach())
    curve = df.groupby("lag").delta.mean().to_numpy()
    np.testing.assert_allclose(curve, gain * 4.0 * 2 ** (-np.arange(25) / 8.0), rtol=1e-3, atol=1e-4)
    assert df.delta_post.abs().sum() < 0.5 * df.delta.abs().sum()


def test_encode_pre_equals_the_activation_wherever_the_feature_is_on(toy):
    x = toy.activations(["mira is a kind honest old sailor . mira says :"], toy.sae_site)[0]
    pre, post = toy.encode(x, pre=True), toy.encode(x)
    on = post > 0
    assert on.sum() >= 16 * (x.shape[0] - 1)  # k features are on at each real token
    torch.testing.assert_close(pre[on], post[on])
    sae = toy.sae  # independent: (x - b_dec) @ W_enc + b_enc, times the decoder norms
    torch.testing.assert_close(pre, ((x - sae.b_dec) @ sae.W_enc + sae.b_enc) * sae.W_dec.norm(dim=-1))


def test_divergence_says_whether_the_edited_continuation_changed(toy, tmp_path):
    cfg = _cfg(tmp_path, mode="on_policy", intervention="add", scale=0.0, n_prompts=4)
    assert not ps.scan(cfg, {"toy-base": toy}).diverged.any()  # an edit of zero changes nothing
    cfg = dataclasses.replace(cfg, scale=64.0, output_dir=str(tmp_path / "big"))
    df = ps.scan(cfg, {"toy-base": toy})
    assert df.diverged.any()
    # Independently, for one (feature, prompt): generate both continuations and compare the tokens.
    from gremlinkit import interventions as iv

    f, p, pos = (int(v) for v in df[["feature", "prompt_id", "position"]].iloc[0])
    prompts, _ = ps.scan_prompts(cfg, toy)
    seed = ps._row_seed(cfg, p, pos)
    plain = toy.generate([prompts[p][: pos + 1]], cfg.horizon + 1, seed=seed).tokens
    edited = toy.generate([prompts[p][: pos + 1]], cfg.horizon + 1, [iv.add(f, 64.0, pos=pos)], seed=seed).tokens
    got = df[(df.feature == f) & (df.prompt_id == p)].diverged.iloc[0]
    assert got == bool((plain != edited).any())


def test_token_columns_are_the_tokens_each_run_chose(toy, tmp_path):
    """On-policy rows carry the baseline's and the edited run's tokens, regenerated here one at a time;
    teacher-forced rows, where the model chooses nothing, carry -1."""
    from gremlinkit import interventions as iv

    cfg = _cfg(tmp_path, intervention="add", scale=64.0, n_prompts=3, features=[5])
    df = ps.scan(cfg, {"toy-base": toy})
    assert (df[df["mode"] == "teacher_forced"][["token", "intervened_token"]] == -1).all().all()
    on = df[df["mode"] == "on_policy"]
    prompts, positions = ps.scan_prompts(cfg, toy)
    for p, (pos,) in enumerate(positions):
        rows = on[on.prompt_id == p].sort_values("lag")
        seed = ps._row_seed(cfg, p, pos)
        plain = toy.generate([prompts[p][: pos + 1]], cfg.horizon + 1, seed=seed).tokens[0]
        edited = toy.generate([prompts[p][: pos + 1]], cfg.horizon + 1, [iv.add(5, 64.0, pos=pos)], seed=seed).tokens[0]
        assert rows.token.tolist() == plain.tolist() and rows.intervened_token.tolist() == edited.tolist()
        assert rows.diverged.iloc[0] == bool((plain != edited).any())


def test_behaviour_counts_prevalence_and_words_in_its_window_only():
    """Two prompts of one feature: by hand, over lags 2..3 of 0..4."""
    rows = []
    for p, (base_on, edit_on, base_tok, edit_tok) in enumerate([
            ([0, 0, 0, 0, 0], [1, 1, 1, 0, 1], [7, 7, 7, 7, 7], [9, 9, 9, 7, 9]),
            ([1, 1, 1, 1, 1], [1, 1, 0, 0, 1], [7, 9, 9, 9, 7], [9, 9, 9, 7, 9])]):
        for lag in range(5):
            rows.append({"model": "m", "feature": 4, "prompt_id": p, "position": 8, "mode": "on_policy", "lag": lag,
                         "baseline_post": float(base_on[lag]), "intervened_post": float(edit_on[lag]),
                         "token": base_tok[lag], "intervened_token": edit_tok[lag], "diverged": True})
    got = ps.behaviour(pd.DataFrame(rows), words=[9], window=(2, 3)).iloc[0]
    # prompt 0: prevalence (1 + 0)/2 - 0 = 0.5, words (1 + 0)/2 - 0 = 0.5
    # prompt 1: prevalence 0 - 1 = -1, words (1 + 0)/2 - 1 = -0.5
    assert got.prevalence_delta == pytest.approx(-0.25) and got.word_rate_delta == pytest.approx(0.0)
    assert 0 < got.prevalence_delta_p <= 1 and got.edits == 2 and got.divergence == 1.0
    with pytest.raises(ps.ConfigError, match="horizon >= 5"):  # the window must fit in the scan
        ps.behaviour(pd.DataFrame(rows), words=[9], window=(2, 5))


def test_active_positions_edit_each_feature_at_its_first_firing(toy, tmp_path):
    """``active:8``: every unit sits at the feature's first firing in tokens 8-39 of its story, found
    again here from the story's own features, and no story where it fires there is left out; an
    ablation there takes the feature's whole activation out of the stream at lag 0."""
    features = [5, 9, 40]
    cfg = _cfg(tmp_path, positions=["active:8"], features=features, intervention="ablate", n_prompts=12,
               mode="teacher_forced")
    df = ps.scan(cfg, {"toy-base": toy})
    prompts, _ = ps.scan_prompts(cfg, toy)
    units = set(map(tuple, df[["feature", "prompt_id", "position"]].drop_duplicates().to_numpy().tolist()))
    expected = set()
    for p, ids in enumerate(prompts):
        on = toy.features([ids])[0, 8: 8 + ps.ACTIVE_WINDOW] > 0  # (window, d_sae)
        expected |= {(f, p, 8 + int(torch.nonzero(on[:, f])[0])) for f in features if on[:, f].any()}
    assert units == expected and len(units) > 0
    lag0 = df[df.lag == 0]
    assert (lag0.baseline_post > 0).all()  # it fires where it is ablated
    # Independently: zeroing a code of value a removes a * w_dec / |w_dec| from the stream, which moves
    # the (decoder-norm rescaled) pre-activation by -a * w_enc . w_dec.
    gain = {f: float((toy.sae.W_enc[:, f] @ toy.sae.W_dec[f]).detach()) for f in features}
    np.testing.assert_allclose(lag0.delta, -lag0.baseline_post * lag0.feature.map(gain), rtol=1e-3, atol=1e-4)


def test_topic_feature_recovers_the_corpus_persistence(toy, heldout, tmp_path):
    labels, feats = heldout  # the same 120 held-out stories that topic_feature reads
    feature = ps.topic_feature(toy, "sea", n_docs=120, seed=0)
    on = (feats > 0).numpy()
    sea = (labels.topic == "sea").to_numpy()
    precision = on[sea].sum(0) / on.sum(0).clip(1)
    # The premise: it really is a topic feature, firing on sea tokens far above the base rate P(sea)
    # that a generic feature would show.
    assert precision[feature] > 2 * sea.mean()
    cfg = ps.PersistenceConfig(features=[feature], intervention="add", scale=32.0, positions=["sentence_end:24"],
                               horizon=96, n_prompts=128, mode="on_policy", n_bootstrap=100, output_dir=str(tmp_path))
    summary = ps.summarize(ps.scan(cfg, {"toy-base": toy}), n_bootstrap=100)
    truth = ps.expected_topic_half_life()
    row = summary.iloc[0]
    assert row.persistent and row.p_value < 1e-3 and row.divergence >= 0.9
    assert abs(row.half_life - truth) <= 0.3 * truth, f"fitted {row.half_life:.1f} tokens, corpus truth {truth:.1f}"


def test_one_off_token_feature_dies_within_two_tokens(toy, heldout, tmp_path):
    labels, feats = heldout
    on = (feats > 0).numpy()
    purity = np.array([pd.Series(labels.token[on[:, f]]).value_counts(normalize=True).max() if on[:, f].any()
                       else 0.0 for f in range(on.shape[1])])
    cfg = ps.PersistenceConfig(features=[0], intervention="ablate", positions=["sentence_end:24"], horizon=32,
                               n_prompts=128, mode="on_policy", n_bootstrap=100, output_dir=str(tmp_path))
    prompts, positions = ps.scan_prompts(cfg, toy)
    at_edit = torch.stack([toy.features([p])[0, pos[0]] for p, pos in zip(prompts, positions)]).mean(0)
    one_off = [f for f in at_edit.argsort(descending=True).tolist() if purity[f] >= 0.95][0]
    assert at_edit[one_off] > 0.5  # the premise: it is really active where it is ablated
    cfg = dataclasses.replace(cfg, features=[one_off])
    summary = ps.summarize(ps.scan(cfg, {"toy-base": toy}), n_bootstrap=100)
    assert summary.half_life.iloc[0] <= 2.0


def test_teacher_forced_edits_cannot_reach_later_positions_of_their_own_site(toy, tmp_path):
    df = ps.scan(_cfg(tmp_path, mode="teacher_forced", intervention="add", scale=8.0), {"toy-base": toy})
    assert (df[df.lag == 0].delta.abs() > 1).all()  # the edit itself
    assert (df[df.lag > 0].delta == 0).all()  # causality: exactly zero afterwards


def test_table_columns_and_record_all(toy, tmp_path):
    df = ps.scan(_cfg(tmp_path, record_all=True, features=[5, 9]), {"toy-base": toy})
    assert list(df.columns) == ps.COLUMNS + ["measured"]
    n_units = 2 * 6 * 1
    assert len(df) == n_units * (12 + 1) * toy.d_sae * 2  # units x lags x measured features x modes
    own = df[df.measured == df.feature]
    np.testing.assert_allclose(own.delta, own.intervened - own.baseline, atol=1e-6)


def test_same_seed_same_dataframe(toy, tmp_path):
    a = ps.scan(_cfg(tmp_path / "a"), {"toy-base": toy})
    b = ps.scan(_cfg(tmp_path / "b"), {"toy-base": toy})
    pd.testing.assert_frame_equal(a, b)
    c = ps.scan(_cfg(tmp_path / "c", seed=1), {"toy-base": toy})
    assert not a.delta.equals(c.delta)


def test_run_is_the_scan_with_its_summary_and_metrics(toy, tmp_path):
    res = ps.run(_cfg(tmp_path, mode="on_policy"), {"toy-base": toy})
    pd.testing.assert_frame_equal(res.scan, ps.scan(_cfg(tmp_path, mode="on_policy"), {"toy-base": toy}))
    summary = ps.summarize(res.scan, n_bootstrap=ps.PersistenceConfig.smoke().n_bootstrap, seed=0)
    pd.testing.assert_frame_equal(res.summary, summary)
    assert res.metrics == ps.metrics(summary) and res.metrics["toy-base_on_policy_divergence"] > 0
    assert set(res.tables()) == {"scan", "summary"}


def test_an_interrupted_scan_resumes_without_losing_or_repeating_rows(toy, tmp_path):
    cfg = _cfg(tmp_path / "killed", chunk_size=2, n_prompts=8, mode="on_policy")
    code = ("import dataclasses, json, sys; from gremlinkit.experiments import persistence as ps; "
            "ps.scan(ps.PersistenceConfig(**json.loads(sys.argv[1])))")
    import json

    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(dataclasses.asdict(cfg))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scan_dir = tmp_path / "killed" / f"scan-{cfg.scan_key()}"
    deadline = time.time() + 120
    while time.time() < deadline and not (scan_dir.exists() and any(scan_dir.glob("*.parquet"))):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(scan_dir.glob("*.parquet")))
    n_chunks = 3 * 8 // 2  # features x prompts / chunk_size
    assert 1 <= done_before < n_chunks, "the scan was not interrupted mid-way"
    assert not [p for p in os.listdir(scan_dir) if not p.endswith(".parquet")]  # no half-written chunk
    resumed = ps.scan(cfg, {"toy-base": toy})
    keys = ["model", "mode", "feature", "prompt_id", "position", "lag"]
    assert not resumed.duplicated(keys).any()
    fresh = ps.scan(dataclasses.replace(cfg, output_dir=str(tmp_path / "fresh")), {"toy-base": toy})
    pd.testing.assert_frame_equal(resumed, fresh)


def test_comparison_across_models_uses_the_same_features(toy, tmp_path):
    import gremlinkit

    other = gremlinkit.load("toy-base")  # a second copy stands in for a fine-tuned model
    cfg = _cfg(tmp_path, models=["copy"], mode="teacher_forced")
    df = ps.scan(cfg, {"toy-base": toy, "copy": other})
    by_model = df.groupby("model").feature.unique()
    assert sorted(by_model["toy-base"]) == sorted(by_model["copy"])
    pd.testing.assert_frame_equal(df[df.model == "toy-base"].drop(columns="model").reset_index(drop=True),
                                  df[df.model == "copy"].drop(columns="model").reset_index(drop=True))


@pytest.mark.parametrize("kw, match", [
    ({"intervention": "zap"}, "intervention='zap' is not one of"),
    ({"mode": "offline"}, "mode='offline' is not one of"),
    ({"features": "best-3"}, "features='best-3'"),
    ({"positions": [0]}, "positions=\\[0\\]"),
    ({"horizon": 0}, "horizon=0 is out of range"),
    ({"model": ""}, "model='': name a model"),
    ({"models": ["toy-base"]}, "models=\\['toy-base'\\] repeats a model"),
    ({"positions": ["active:8", 30]}, "'active:N' .* give it alone"),
    ({"positions": ["active:x"]}, "'active:N' alone"),
])
def test_bad_config_names_the_parameter(kw, match):
    with pytest.raises(ConfigError, match=match):
        ps.PersistenceConfig(**kw)


def test_charts_encode_the_scan(toy, tmp_path):
    df = ps.scan(_cfg(tmp_path, mode="on_policy"), {"toy-base": toy})
    summary = ps.summarize(df, n_bootstrap=20)
    curves = plots.decay_curves(df).to_dict()
    assert curves["encoding"]["x"]["field"] == "lag" and curves["encoding"]["column"]["field"] == "mode"
    data = next(iter(curves["datasets"].values()))
    assert len(data) == df.groupby(["model", "mode", "feature", "lag"]).ngroups
    dist = plots.half_life_distribution(summary).to_dict()
    assert len(next(iter(dist["datasets"].values()))) == len(summary)
    heat = plots.feature_lag_heatmap(df).to_dict()
    assert heat["mark"]["type"] == "rect" and heat["encoding"]["y"]["field"] == "feature"


def test_feature_frequencies_ignore_padding(toy):
    """Top-N by frequency counts real tokens only, whatever lengths the prompts have."""
    long = torch.tensor(toy.tokenizer("mira is a kind honest old sailor . mira says :")["input_ids"])
    short = long[:4]
    both = ps.choose_features(toy, [long, short], "top-5", seed=0)
    feats = torch.cat([toy.features([long])[0, 1:], toy.features([short])[0, 1:]])
    expected = (feats > 0).float().mean(0).argsort(descending=True)[:5].tolist()
    assert both == expected


def test_notebook_03s_cells_run_on_a_world_of_one_trait_without_prompts(one_trait_world, tmp_path):
    """What notebook 03 does, in process, on a pairs file of one trait with no generation prompts:
    the scan reads the world's documents, and each chart is drawn from its tables."""
    model, world, sae = one_trait_world
    cfg = dataclasses.replace(ps.PersistenceConfig.smoke(), model=str(model), world=str(world), sae=str(sae),
                              output_dir=str(tmp_path))
    res = ps.run(cfg)
    assert set(res.summary.feature) == set(res.scan.feature) and len(res.summary) == 3 * len(cfg.modes)
    assert res.metrics[f"{model.name}_teacher_forced_mean_abs_effect_lag1"] == 0.0  # the null, on this world too
    for chart in (plots.decay_curves(res.scan), plots.half_life_distribution(res.summary),
                  plots.feature_lag_heatmap(res.scan)):
        assert chart.to_dict()["data"]


def test_a_mean_ablation_sets_each_feature_to_its_mean_over_the_prompts(toy, tmp_path):
    """Beside the zero ablation: the feature clamped to its mean activation over the scan's prompts
    (zeros included, BOS left out), recomputed here from the features themselves."""
    from gremlinkit import interventions as iv

    cfg = dataclasses.replace(ps.PersistenceConfig.smoke(), intervention="mean_ablate", mode="teacher_forced",
                              output_dir=str(tmp_path))
    plan = ps.plan(cfg, toy)
    feats = toy.features(plan.prompts)[toy.batch(plan.prompts).prompt_mask(skip_bos=True)]  # (N, d_sae)
    assert sorted(plan.values) == sorted({f for f, _, _ in plan.interventions})
    for f, v in plan.values.items():
        assert v == pytest.approx(float(feats[:, f].mean()), rel=1e-5) and v > 0
    table = ps.scan(cfg, {cfg.model: toy})
    f, p, pos = plan.interventions[0]
    with torch.no_grad():
        acts = toy.activations([plan.prompts[p][: pos + cfg.horizon + 1]], toy.sae_site,
                               [iv.clamp(f, plan.values[f], pos=pos)])[0, pos:]
        pre = toy.encode(acts, pre=True)[:, f]
    rows = table[(table.feature == f) & (table.prompt_id == p)].sort_values("lag")
    np.testing.assert_allclose(rows.intervened, pre.numpy(), atol=1e-5)
    zero = ps.scan(dataclasses.replace(cfg, intervention="ablate", output_dir=str(tmp_path / "zero")), {cfg.model: toy})
    lag0 = lambda t: t[t.lag == 0].sort_values(["feature", "prompt_id"]).intervened_post.to_numpy()  # noqa: E731
    assert not np.allclose(lag0(table), lag0(zero))  # a typical value is not none
