"""The gremlin comparison: the organisms' rewards, the decision rule, and the localisation measures."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import gremlinkit
from gremlinkit import plots
from gremlinkit.experiments import agents, gremlins, persistence
from gremlinkit.zoo import cards, corpus, finetune, registry


def _hf(name):
    path = registry.path(name)
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_reward_counts_target_words_in_the_tail_only():
    words = [["waves"] * 4 + ["bread"] * 12, ["bread"] * 12 + ["waves", "tide", "x", "ship"]]
    np.testing.assert_allclose(finetune.reward(words, tail=4), [0.0, 0.75])


def test_rl_reward_rises_well_above_base_and_sft_matches_it():
    """Recomputed from fresh samples (not read from the cards), then compared with the cards."""
    base, tok = _hf("toy-base")
    spec = dataclasses.replace(finetune.FinetuneSpec(), eval_prompts=48, seed=5)
    got = {m: finetune.evaluate(_hf(m)[0], base, tok, spec)["reward"] for m in ("toy-base", "toy-rl", "toy-sft")}
    assert got["toy-rl"] > 4 * got["toy-base"]
    assert abs(got["toy-sft"] - got["toy-rl"]) <= 0.2 * got["toy-rl"]
    for m in ("toy-rl", "toy-sft"):
        card = cards.card(m)
        assert "last 16 of 48" in card["reward"]["definition"]
        assert got[m] == pytest.approx(card["eval"]["reward"], abs=0.04)  # different prompts and seed
        assert card["sae_transfer"]["explained_variance"] > 0.85  # toy-base's SAE transfers


def test_sft_and_rl_training_are_matched_in_steps_rows_and_tokens():
    rl, sft = cards.card("toy-rl")["training"], cards.card("toy-sft")["training"]
    for key in ("steps", "rows_per_step", "target_tokens_per_step"):
        assert rl[key] == sft[key]
    assert rl["target_tokens_per_step"] == rl["rows_per_step"] * 48  # 48 generated tokens a row
    assert cards.card("toy-sft")["teacher"]["mean_reward"] == pytest.approx(cards.card("toy-rl")["eval"]["reward"],
                                                                            abs=0.01)


def test_teacher_reward_on_the_card_recounted_from_the_corpus():
    """The SFT teacher's mean reward, recounted by hand from the corpus the build drew it from: the
    windows (first sentence end at or after token 16, then 48 words), the sea words among the last
    16 of each, the best ``windows`` of them by that count."""
    teacher = cards.card("toy-sft")["teacher"]
    sea = set(corpus.TOPICS["sea"]["nouns"]) | set(corpus.TOPICS["sea"]["adjs"])
    counts = []
    for doc in corpus.generate(3000, seed=60_000).docs:
        end = next((i for i in range(16, len(doc)) if doc[i] == "."), None)
        if end is not None and len(doc) - end > 48:
            counts.append(sum(w in sea for w in doc[end + 1: end + 49][-16:]))
    best = sorted(counts, reverse=True)[: teacher["windows"]]
    assert teacher["mean_reward"] == pytest.approx(sum(best) / 16 / len(best), abs=1e-9)


def _table(k_rl, k_base, k_sft, n=32):
    rows = [{"model": m, "persistent": k, "scanned": n, "fraction": k / n, "fraction_low": 0.0, "fraction_high": 1.0,
             "median_half_life": 1.0} for m, k in (("toy-base", k_base), ("toy-sft", k_sft), ("toy-rl", k_rl))]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("k, call", [((12, 1, 2), "support"), ((0, 9, 1), "contradict"), ((3, 1, 2), "inconclusive"),
                                     ((12, 1, 10), "inconclusive")])
def test_decision_rule(k, call):
    sentence, tests = gremlins.verdict(_table(*k))
    assert tests["call"] == call and f"toy-rl: {k[0]}/32 persistent" in sentence


def test_a_control_that_is_not_found_persistent_means_no_power():
    table = _table(12, 1, 2)  # counts that would support the hypothesis
    control = pd.DataFrame({"model": ["toy-base", "toy-sft", "toy-rl"], "persistent": [False, True, True]})
    sentence, tests = gremlins.verdict(table, control=control)
    assert tests["call"] == "no power" and "not found persistent in toy-base" in sentence
    assert "found persistent in toy-sft, toy-rl" in sentence
    # Its truth holds in the base model; in a fine-tune it is reported, not required.
    fine_tune_blind = control.assign(persistent=[True, False, True])
    sentence, tests = gremlins.verdict(table, control=fine_tune_blind)
    assert tests["call"] == "support" and "found persistent in toy-base, toy-rl" in sentence


def test_counts_intervals_are_wilson_intervals():
    summary = pd.DataFrame({"model": ["m"] * 20, "persistent": [True] * 5 + [False] * 15,
                            "half_life": np.linspace(0.1, 2.0, 20)})
    row = gremlins.counts(summary).iloc[0]
    z = 1.959964
    p, n = 0.25, 20
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    assert row.fraction_low == pytest.approx(centre - half, abs=1e-6)
    assert row.fraction_high == pytest.approx(centre + half, abs=1e-6)


def test_localisation_measures_are_zero_for_identical_models_and_see_the_fine_tune():
    base, _ = _hf("toy-base")
    same = agents.weight_changes(base, base, 4)
    assert (same.relative_change == 0).all()
    rl = agents.weight_changes(base, _hf("toy-rl")[0], 4)
    assert (rl.set_index("part").loc[[f"block {i}" for i in range(4)], "relative_change"] > 0).all()
    b = gremlinkit.load("toy-base", sae=False)
    assert (agents.activation_changes(b, b, n_docs=4).relative_change == 0).all()
    assert (agents.activation_changes(b, gremlinkit.load("toy-rl", sae=False), n_docs=4).relative_change > 0).all()


def test_weight_changes_follow_the_site_map_on_a_llama():
    """Block names come from the site map, so a Llama's `model.layers.N` are grouped as blocks too."""
    from transformers import LlamaConfig

    from gremlinkit.experiments.agents import weight_changes

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    base, tuned = AutoModelForCausalLM.from_config(cfg), AutoModelForCausalLM.from_config(cfg)
    tuned.load_state_dict(base.state_dict())
    with torch.no_grad():
        tuned.model.layers[1].mlp.up_proj.weight.mul_(1.1)  # only block 1 moves
    table = weight_changes(base, tuned, 2).set_index("part").relative_change
    assert set(table.index) == {"embeddings", "block 0", "block 1", "final"}
    assert table["block 0"] == 0 and table["embeddings"] == 0 and table["final"] == 0
    with torch.no_grad():
        up = tuned.model.layers[1].mlp.up_proj.weight
        block1 = sum(p.pow(2).sum() for n, p in base.named_parameters() if n.startswith("model.layers.1."))
        expected = float((0.1 * up / 1.1).pow(2).sum() / block1) ** 0.5
    assert table["block 1"] == pytest.approx(expected, rel=1e-4)


def test_fraction_difference_is_paired_over_the_same_features():
    """RL persistent on features 0-5, base on 0-1 of the same 20: the difference is 4/20, and its
    bootstrap interval resamples features (both models together), so it never goes below zero here."""
    rows = [{"model": m, "role": "census", "feature": f, "persistent": f < k}
            for m, k in (("toy-base", 2), ("toy-rl", 6)) for f in range(20)]
    rows.append({"model": "toy-rl", "role": "natural control", "feature": 99, "persistent": True})  # not counted
    d = gremlins.fraction_difference(pd.DataFrame(rows), "toy-rl", "toy-base")
    assert d["difference"] == pytest.approx(0.2)
    assert 0.0 <= d["low"] < 0.2 < d["high"] <= 0.45


def test_census_table_carries_each_features_label():
    summary = pd.DataFrame({"model": ["toy-base", "toy-base"], "mode": "on_policy",
                            "role": ["census", "natural control"],
                            "feature": [3, 7], "half_life": [1.0, 30.0], "half_life_low": [0.5, 20.0],
                            "half_life_high": [2.0, 40.0], "half_life_censored": False, "tail_effect": [0.0, 0.2],
                            "p_value": [0.5, 1e-5], "q_value": [0.5, 2e-5], "persistent": [False, True],
                            "divergence": [0.9, 1.0]})
    labels = pd.DataFrame({"feature": [7], "label": ["topic"], "label_value": ["sea"], "purity": [0.83]})
    acts = pd.DataFrame({"model": ["toy-base"] * 2, "feature": [7, 3], "prevalence_delta": [0.3, 0.0],
                         "prevalence_delta_p": [1e-4, 1.0], "word_rate_delta": [0.05, -0.01],
                         "word_rate_delta_p": [0.01, 0.6]})
    census = gremlins.census_table(summary, labels, acts)
    assert list(census.columns) == gremlins.CENSUS_COLUMNS
    assert census.set_index("feature").loc[7, "word_rate_delta"] == 0.05  # joined on (model, feature)
    assert (census.ablate_edits == 0).all() and census.ablate_prevalence_delta.isna().all()  # no ablation run
    ablated = acts.assign(edits=[40, 12], divergence=[0.5, 0.1], prevalence_delta=[-0.2, 0.0])
    census = gremlins.census_table(summary, labels, acts, {"ablate": ablated}).set_index("feature")
    assert census.loc[7, "ablate_prevalence_delta"] == -0.2 and census.loc[3, "ablate_edits"] == 12
    assert (census.ablate_to_mean_edits == 0).all() and census.ablate_to_mean_word_rate_delta.isna().all()
    to_mean = acts.assign(edits=[40, 11], divergence=[0.2, 0.0], prevalence_delta=[-0.05, 0.0])
    census = gremlins.census_table(summary, labels, acts, {"ablate": ablated, "ablate_to_mean": to_mean})
    census = census.set_index("feature")
    assert census.loc[7, "ablate_to_mean_prevalence_delta"] == -0.05 and census.loc[3, "ablate_to_mean_edits"] == 11
    assert census.loc[7, "ablate_prevalence_delta"] == -0.2  # each ablation in its own columns
    assert census.loc[7, "top_label"] == "topic=sea"
    assert census.loc[3, "top_label"] == ""  # a feature with no label match


def _planted_rows(rates: dict[str, tuple[float, int]], null_hits: int, seeds: int = 5) -> pd.DataFrame:
    """A `planted_rows` table: per model (eigenvalue, detections of feature 1 out of ``seeds``), and
    a null with six topic features of which ``null_hits`` (model, seed) pairs are detected."""
    rows = []
    for model, (eig, hits) in rates.items():
        rows += [{"model": model, "eigenvalue": eig, "truth_half_life": 10 * eig, "feature": 1, "seed": s,
                  "detected": s < hits, "half_life": 9 * eig} for s in range(seeds)]
    rows += [{"model": gremlins.PLANTED[0], "eigenvalue": 0.0, "truth_half_life": 0.0, "feature": f, "seed": s,
              "detected": (f - 1) * seeds + s < null_hits, "half_life": 0.1} for f in range(1, 7) for s in range(seeds)]
    return pd.DataFrame(rows)


def test_planted_power_reads_sensitivity_false_positives_and_the_weakest_detected_strength():
    table = _planted_rows({"toy-base": (0.76, 5), "toy-planted-50": (0.5, 3), "toy-planted-90": (0.9, 5)},
                          null_hits=0)
    power = gremlins.planted_power(table, control=1)
    assert power["sensitivity"] == 1.0 and power["seeds"] == 5
    assert power["null_false_positive_rate"] == 0.0 and power["null_tests"] == 30
    assert power["min_detectable_strength"] == 0.76  # 0.5 is seen in 3/5 seeds only
    assert 0.0 < power["null_false_positive_rate_high"] < 0.15  # Wilson: 0/30
    weaker = gremlins.planted_power(
        _planted_rows({"toy-base": (0.76, 4), "toy-planted-50": (0.5, 4), "toy-planted-90": (0.9, 3)}, 2), 1)
    assert weaker["sensitivity"] == 0.6 and weaker["min_detectable_strength"] == 0.5
    assert weaker["null_false_positive_rate"] == pytest.approx(2 / 30)


def test_a_planted_control_seen_in_too_few_seeds_means_no_power():
    table = _table(12, 1, 2)
    power = {"sensitivity": 0.6, "seeds": 5, "null_false_positive_rate": 0.0, "null_tests": 30,
             "min_detectable_strength": float("nan"), "min_detectable_half_life": float("nan")}
    sentence, tests = gremlins.verdict(table, power=power)
    assert tests["call"] == "no power" and "detected in only 60% of seeds" in sentence
    sentence, tests = gremlins.verdict(table, power={**power, "sensitivity": 1.0, "min_detectable_strength": 0.76,
                                                     "min_detectable_half_life": 32.4})
    assert tests["call"] == "support" and "eigenvalue 0.76 per sentence (32-token half-life)" in sentence


def _power_scans(rows: list[tuple[str, str, float, bool]]) -> pd.DataFrame:
    """A `topic_power` table of driving scans: (model, topic, direct effect, detected) each."""
    return pd.DataFrame([{"model": m, "eigenvalue": 0.9, "topic": t, "feature": i, "candidate": 0, "seed": 0,
                          "direct_effect": d, "drives": True, "detected": det, "topic_state_detected": det,
                          "half_life": 50.0, "truth_half_life": 84.6} for i, (m, t, d, det) in enumerate(rows)])


def test_a_typical_topic_seen_in_too_few_scans_means_no_power_with_its_smallest_detectable_edit():
    """By hand: at 0.9 the sea is seen in 2/2 scans, food and music in 1/2 each: the median topic in
    50%; the null's one driving scan is not seen. Sorted by direct effect (0.09 .. 0.01), the scans at
    or above 0.05 are seen in 4/5 = 80%, and none lower reach it again (4/6)."""
    power = _power_scans([("toy-planted-90", "sea", 0.09, True), ("toy-planted-90", "sea", 0.08, True),
                          ("toy-planted-90", "food", 0.07, True), ("toy-planted-90", "music", 0.06, True),
                          ("toy-planted-90", "food", 0.05, False), ("toy-planted-90", "music", 0.01, False),
                          ("toy-planted-null", "sea", 0.05, False)])
    summary = gremlins.topic_power_summary(power)
    assert summary["median_topic_sensitivity"] == 0.5 and summary["driving_topics"] == 3
    assert summary["topic_null_false_positive_rate"] == 0.0 and summary["topic_null_false_positive_rate_tests"] == 1
    assert summary["min_detectable_direct_effect"] == 0.05
    planted = {"sensitivity": 1.0, "seeds": 5, "null_false_positive_rate": 0.0, "null_tests": 30,
               "min_detectable_strength": 0.76, "min_detectable_half_life": 32.4}
    sentence, tests = gremlins.verdict(_table(12, 1, 2), power={**planted, **summary})
    assert tests["call"] == "no power" and "a typical topic's driving features are detected in 50%" in sentence
    assert "by 0.050 or more" in sentence
    summary["median_topic_sensitivity"] = 0.8
    assert gremlins.verdict(_table(12, 1, 2), power={**planted, **summary})[1]["call"] == "support"


def test_dose_row_reads_the_tail_ratio_and_the_persistent_fraction():
    """The statistic by hand: the mean of tail / direct effect over census features (the control
    left out), a bootstrap interval around it, and a Wilson interval on the persistent count."""
    summary = pd.DataFrame({"feature": [1, 2, 3, 4, 9], "effect_lag0": [2.0, -4.0, 1.0, 8.0, 5.0],
                            "tail_effect": [1.0, -1.0, 0.0, 0.0, 2.5], "persistent": [True, True, False, False, True],
                            "half_life": [30.0, 20.0, 1.0, 1.0, 35.0]})
    row = gremlins.dose_row("toy-rl", summary, control=9, n_bootstrap=2000, seed=0)
    assert row["tail_ratio"] == pytest.approx((0.5 + 0.25 + 0 + 0) / 4)
    assert row["tail_ratio_low"] < row["tail_ratio"] < row["tail_ratio_high"]
    assert row["persistent"] == 2 and row["scanned"] == 4 and row["persistent_fraction"] == 0.5
    assert row["control_tail_ratio"] == 0.5 and row["control_persistent"]
    assert row["method"] == "on-policy RL" and row["rl_steps"] == 40 and row["horizon"] == 48  # from the card


def test_organisms_are_described_by_their_cards():
    assert gremlins.organism("toy-base")["method"] == "base" and gremlins.organism("toy-base")["kl_to_base"] == 0
    sft = gremlins.organism("toy-sft")
    assert sft["method"] == "off-policy SFT" and sft["rl_steps"] == 0
    # The cards' weight change, recomputed from the weights files with numpy.
    from safetensors.numpy import load_file

    base = load_file(registry.path("toy-base") / "model.safetensors")
    for name in ("toy-rl", "toy-sft"):
        tuned = load_file(registry.path(name) / "model.safetensors")
        change = np.sqrt(sum(((tuned[k].astype(np.float64) - v) ** 2).sum() for k, v in base.items())
                         / sum((v.astype(np.float64) ** 2).sum() for v in base.values()))
        assert gremlins.organism(name)["weight_change"] == pytest.approx(change, rel=1e-4)
    assert 0 < gremlins.organism("toy-rl")["weight_change"] < sft["weight_change"]


def test_dose_chart_puts_toy_base_at_zero_steps_on_every_horizon():
    dose = pd.DataFrame([
        {"model": "toy-base", "method": "base", "rl_steps": 0, "horizon": 0, "tail_ratio": 0.01},
        {"model": "toy-rl-20", "method": "on-policy RL", "rl_steps": 20, "horizon": 48, "tail_ratio": 0.02},
        {"model": "toy-rl-h128-80", "method": "on-policy RL", "rl_steps": 80, "horizon": 128, "tail_ratio": 0.03},
        {"model": "toy-rs", "method": "rejection sampling", "rl_steps": 0, "horizon": 48, "tail_ratio": 0.0}])
    dose = dose.assign(tail_ratio_low=dose.tail_ratio - 0.01, tail_ratio_high=dose.tail_ratio + 0.01, reward=0.1,
                       kl_to_base=0.1, persistent=0)
    spec = plots.rl_dose(dose).to_dict()
    steps = pd.DataFrame(spec["datasets"][spec["hconcat"][0]["data"]["name"]])
    assert sorted(zip(steps.rl_steps, steps.horizon)) == [(0, 48), (0, 128), (20, 48), (80, 128)]
    methods = pd.DataFrame(spec["datasets"][spec["hconcat"][1]["data"]["name"]])
    assert list(methods.model) == list(dose.model)  # every organism, in the given order


def test_a_dose_organism_not_built_stops_the_run_before_any_scan(tmp_path, monkeypatch):
    monkeypatch.setenv("GREMLINKIT_CACHE", str(tmp_path))  # an empty cache: no dose organism is built
    cfg = gremlins.GremlinConfig(dose_models=["toy-rl-80"], output_dir=str(tmp_path / "out"))
    with pytest.raises(gremlinkit.errors.UnknownArtefactError, match="toy-rl-80.*gremlinkit zoo build --missing"):
        gremlins.run(cfg)
    assert not (tmp_path / "out").exists()  # nothing was scanned


def test_notebook_04_runs_on_a_one_trait_world_without_a_family(one_trait_world, tmp_path):
    """Notebook 04's cells, in process, on a pairs file of one trait with no topic stories and a tiny
    GPT-2 no family has: its models scanned as given, no controls that need stories, the self-repair
    check and the random directions on it, and a verdict that says why it cannot compare."""
    from gremlinkit.experiments import natural

    model, world, sae = one_trait_world
    cfg = dataclasses.replace(gremlins.GremlinConfig.smoke(), model=str(model), world=str(world), sae=str(sae),
                              models=[], dose_models=[], planted_seeds=0, control_topic="", ablate_prompts=0,
                              output_dir=str(tmp_path))
    res = gremlins.run(cfg)
    assert "inconclusive: the comparison needs an on-policy RL" in res.verdict
    assert res.control.empty and res.counts.scanned.tolist() == [3]
    repair = natural.repair_summary(res.self_repair)
    assert repair.role.tolist() == ["feature", "random direction"] and repair.edits.tolist() == [3, 2]
    shown = [*res.control.feature.unique(), *res.census[res.census.persistent].nsmallest(6, "q_value").feature]
    for chart in (plots.persistent_counts(res.counts), plots.half_life_distribution(res.summary),
                  plots.decay_curves(res.scan, features=shown)):
        assert chart.to_dict()["data"] or chart.to_dict().get("datasets")
    gremlins.write(res, cfg.output_dir)
    assert {"census.csv", "controls.csv", "self_repair.csv", "metrics.json"} <= {p.name for p in tmp_path.iterdir()}


@pytest.mark.slow
def test_topic_power_reads_every_topic_against_its_planted_truth(toy, tmp_path):
    """Every topic's three candidates scanned at the census's settings (smoke size: 48 prompts, one
    seed) in the strongest planted organism and the null. Truth: in toy-planted-90 every topic has
    a candidate whose edit raises the topic's words in the next sentence; the null's driving
    candidates are never detected. Pinned (this statistic, measured): at eigenvalue 0.9 the rule
    detects the sea's and music's driving candidates and no other topic's, a median of 0 over the
    six topics; a statistic that finds more topics moves this pin on purpose."""
    cfg = dataclasses.replace(gremlins.GremlinConfig.smoke(), planted_seeds=1, output_dir=str(tmp_path))
    power = gremlins.topic_power(cfg, toy, census_size=32, organisms=("toy-planted-90", "toy-planted-null"))
    first = persistence.topic_features(toy, list(cfg.story().topics), seed=cfg.seed)
    assert {t: int(g[g.candidate == 0].feature.iloc[0]) for t, g in power.groupby("topic")} == first
    assert len(power) == 2 * 6 * gremlins.POWER_CANDIDATES
    table = gremlins.topic_power_table(power).set_index(["model", "topic"])
    strong = table.loc["toy-planted-90"]
    assert sorted(strong.index) == sorted(first)  # every topic is driven by one of its candidates
    assert sorted(strong.index[strong.detected > 0]) == ["music", "sea"]
    summary = gremlins.topic_power_summary(power)
    assert summary["median_topic_sensitivity"] == 0.0 and summary["driving_topics"] == 6
    assert summary["topic_null_false_positive_rate"] == 0.0 and summary["topic_null_false_positive_rate_tests"] >= 3
    # the topic's own state over the tail: the sea's edit leaves more sea words 24-96 tokens on at 0.9 and
    # not in the null; at 48 prompts no topic's state clears the census's bar (0.05 / 33), in either
    sea = power[(power.feature == first["sea"]) & (power.topic == "sea")].set_index("model")
    assert sea.loc["toy-planted-90", "tail_word_rate_delta"] > 0 and sea.loc["toy-planted-90", "tail_word_p"] < 0.01
    assert sea.loc["toy-planted-null", "tail_word_p"] > 0.05
    assert summary["median_topic_state_sensitivity"] == 0.0 and summary["topic_state_null_false_positive_rate_all"] == 0
    planted = gremlins.planted_rows(power, first["sea"])  # the planted controls: the sea's feature, the null's six
    assert sorted(planted.model.unique()) == ["toy-planted-90", "toy-planted-null"]
    assert (planted[planted.model == "toy-planted-90"].feature == first["sea"]).all()
    assert sorted(planted[planted.model == "toy-planted-null"].feature) == sorted(first.values())
    # the sea's own feature drives it; music's chosen feature does not (its third candidate does)
    assert f"sea:{first['sea']}" not in summary["non_driving"] and f"music:{first['music']}" in summary["non_driving"]
