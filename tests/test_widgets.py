"""Widget state objects, driven directly, and their ipywidgets views driven through their controls.

Numbers are checked against independent computations: feature activations recomputed by
transformers, logit effects by a plain PyTorch hook, the persona lexicon, planted scan curves.
"""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from gremlinkit.errors import InputError
from gremlinkit.experiments import explore
from gremlinkit.zoo import registry
from widgets import state, views

CFG = explore.ExploreConfig.smoke()


@pytest.fixture(scope="module")
def explorer(toy):
    return state.FeatureExplorerState(CFG, models=["toy-base", "toy-rl"], saes=["toy-base-sae"],
                                      loader=lambda m, s: toy if m == "toy-base" else state._load(m, s))


@pytest.fixture(scope="module")
def hf_base():
    return AutoModelForCausalLM.from_pretrained(registry.path("toy-base")).eval()


def test_state_module_does_not_import_ipywidgets():
    code = "import sys, widgets.state; assert 'ipywidgets' not in sys.modules, 'state imported ipywidgets'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_explorer_opens_on_the_most_frequent_feature(explorer):
    freq = (explorer.index.feats > 0).float().mean(0)
    assert explorer.feature == int(freq.argmax())
    assert explorer.live_features()[0] == explorer.feature


def test_contexts_match_activations_recomputed_by_transformers(explorer, toy, hf_base):
    ctx = explorer.contexts()
    peaks = ctx[ctx.offset == 0].sort_values("context")
    assert len(peaks) == CFG.contexts and peaks.doc.is_unique
    assert (np.diff(peaks.activation.to_numpy()) <= 0).all(), "contexts are strongest first"
    layer = int(toy.sae_site.split(".")[1])
    for p in peaks.itertuples():
        ids = torch.as_tensor(explorer.index.docs[p.doc])[None]
        with torch.no_grad():
            resid = hf_base(ids, output_hidden_states=True).hidden_states[layer]  # resid_pre of block `layer`
            acts = toy.sae.encode(resid[0])[:, explorer.feature]  # (T,)
        assert acts.max().item() == pytest.approx(p.activation, abs=1e-4), "the peak is the story's maximum"
        assert acts[p.peak_pos].item() == pytest.approx(p.activation, abs=1e-4)
        window = ctx[ctx.context == p.context].sort_values("offset")
        tokens = toy.tokenizer.convert_ids_to_tokens(ids[0, window.offset.to_numpy() + p.peak_pos].tolist())
        assert window.token.tolist() == tokens
        assert np.allclose(window.activation, acts[window.offset.to_numpy() + p.peak_pos].numpy(), atol=1e-4)


def test_logit_effects_match_a_plain_pytorch_ablation(explorer, toy, hf_base):
    ctx, f = explorer.contexts(), explorer.feature
    effects = explorer.effects()
    peaks = ctx.drop_duplicates("context")
    layer = int(toy.sae_site.split(".")[1])
    w_dec = toy.sae.W_dec[f].detach()
    diffs = []
    for p in peaks.itertuples():
        ids = torch.as_tensor(explorer.index.docs[p.doc][: p.peak_pos + 1])[None]

        def remove_feature(module, args):
            x = args[0].clone()  # the block's input hidden states: resid_pre
            x[0, -1] -= toy.sae.encode(x[0, -1:])[0, f] * w_dec  # decode(f') - decode(f), error term kept
            return (x, *args[1:])

        with torch.no_grad():
            base = torch.log_softmax(hf_base(ids).logits[0, -1], -1)
            handle = hf_base.transformer.h[layer].register_forward_pre_hook(remove_feature)
            try:
                ablated = torch.log_softmax(hf_base(ids).logits[0, -1], -1)
            finally:
                handle.remove()
        diffs.append(base - ablated)
    expected = torch.stack(diffs).mean(0)
    for row in effects.itertuples():
        tid = toy.tokenizer.convert_tokens_to_ids(row.token)
        assert row.effect == pytest.approx(expected[tid].item(), abs=1e-4), row.token
    promoted = effects[effects.direction == "promotes"].effect
    assert promoted.iloc[0] == pytest.approx(expected.max().item(), abs=1e-4)


def test_histogram_values_are_the_nonzero_activations(explorer):
    values = explorer.values()
    col = explorer.index.feats[:, explorer.feature].numpy()
    assert len(values) == int((col > 0).sum())
    assert values.activation.sum() == pytest.approx(col.sum(), rel=1e-5)


def test_switching_model_changes_activations_and_bad_picks_change_nothing(explorer):
    f = explorer.feature
    base_vals = explorer.values().activation.to_numpy()
    with pytest.raises(InputError, match=r"384 features \(0\.\.383\)"):
        explorer.select(model="toy-rl", feature=384)
    assert (explorer.model, explorer.feature) == ("toy-base", f)
    with pytest.raises(InputError, match="toy-zzz"):
        explorer.select(model="toy-zzz")
    explorer.select(model="toy-rl")
    try:
        rl_vals = explorer.values().activation.to_numpy()
        assert explorer.feature == f
        assert len(rl_vals) != len(base_vals) or not np.allclose(rl_vals, base_vals)
    finally:
        explorer.select(model="toy-base")


def test_explorer_charts_encode_their_tables(explorer):
    charts = explorer.charts()
    heat = charts["contexts"].to_dict()
    assert {"offset", "context", "activation", "token"} <= set(pd.DataFrame(heat["datasets"][heat["data"]["name"]
                                                                                            ]).columns)
    assert charts["effects"].to_dict()["encoding"]["color"]["scale"]["domain"] == ["promotes", "suppresses"]


@pytest.fixture(scope="module")
def steering(toy):
    return state.SteeringState(CFG, subject=toy)


def test_steering_at_zero_equals_the_paired_baseline(steering):
    steering.select(coefficient=0.0)
    assert steering.texts("steered") == steering.texts("baseline")


def test_moving_the_coefficient_changes_only_the_steered_side(steering):
    steering.select(coefficient=0.0)
    baseline = steering.texts("baseline")
    steering.select(coefficient=6.0)
    assert steering.texts("baseline") == baseline, "the baseline does not depend on the coefficient"
    assert steering.texts("steered") != baseline
    s = steering.samples()
    rates = s.groupby("condition").positive_rate.mean()
    assert rates["steered"] > rates["baseline"] + 0.05, "steering toward Waluigi (the positive pole) raises Waluigi words"
    chart = steering.chart().to_dict()
    assert "x 6" in chart["title"]


def test_steering_rejects_bad_input_and_keeps_its_state(steering):
    steering.select(trait="persona", coefficient=1.0)
    prompt = steering.prompt
    with pytest.raises(InputError, match=r"valid range is \[-8.0, 8.0\]"):
        steering.select(coefficient=9.5)
    with pytest.raises(InputError, match="zzyzx"):
        steering.select(prompt="mira says zzyzx :")
    with pytest.raises(InputError, match="accent"):
        steering.select(trait="accent")
    assert (steering.trait, steering.coefficient, steering.prompt) == ("persona", 1.0, prompt)


def _planted_scan() -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = []
    for model, h in (("toy-base", 2.0), ("toy-rl", 10.0)):
        for feature, amp in ((5, 1.0), (9, -0.5)):
            for prompt in range(3):
                for lag in range(9):
                    delta = amp * 2 ** (-lag / h) * (1 + 0.1 * (prompt - 1))
                    rows.append({"model": model, "feature": feature, "prompt_id": prompt, "position": 20,
                                 "mode": "on_policy", "lag": lag, "baseline": 0.0, "intervened": delta,
                                 "delta": delta})
    summary = pd.DataFrame([{"model": m, "mode": "on_policy", "feature": f, "half_life": h, "half_life_low": h - 1,
                             "half_life_high": h + 1, "persistent": h >= 8}
                            for m, h in (("toy-base", 2.0), ("toy-rl", 10.0)) for f in (5, 9)])
    return pd.DataFrame(rows), summary


def test_scan_viewer_recovers_planted_curves():
    scan, summary = _planted_scan()
    viewer = state.ScanViewerState(scan, summary)
    assert viewer.features == [5, 9] and viewer.feature == 5
    viewer.select(9)
    curves = viewer.curves().set_index(["model", "lag"])
    for model, h in (("toy-base", 2.0), ("toy-rl", 10.0)):
        for lag in range(9):
            assert curves.loc[(model, lag), "delta"] == pytest.approx(-0.5 * 2 ** (-lag / h))
            assert curves.loc[(model, lag), "n"] == 3
    assert viewer.half_lives().set_index("model").loc["toy-rl", "persistent"]
    with pytest.raises(InputError, match=r"scanned features: \[5, 9\]"):
        viewer.select(7)
    assert viewer.feature == 9


# --------------------------------------------------------------------------- views


def test_views_redraw_when_their_controls_move(explorer, steering):
    prompt = steering.prompt
    steering.select(trait="persona", coefficient=0.0)
    play = views.SteeringPlayground(steering)
    before = play.steered.value
    assert before.split("<ol>")[1] == play.baseline.value.split("<ol>")[1], "coefficient 0: the same samples"
    play.coefficient.value = 6.0
    assert steering.coefficient == 6.0 and play.steered.value != before
    assert play.plot.outputs and "image/svg+xml" in play.plot.outputs[0]["data"]
    play.prompt.value = "mira says zzyzx :"
    assert "zzyzx" in play.status.value and steering.prompt == prompt

    fx = views.FeatureExplorer(explorer)
    second = explorer.live_features()[1]
    fx.feature.value = second
    assert explorer.feature == second
    svg = fx.plots.outputs[0]["data"]["image/svg+xml"]
    assert f"Feature {second}" in svg


def test_scan_view_lists_half_lives():
    viewer = state.ScanViewerState(*_planted_scan())
    view = views.ScanViewer(viewer)
    view.feature.value = 9
    assert viewer.feature == 9 and "10.00" in view.table.value


def test_the_subject_cache_loads_once_and_clear_lets_models_go():
    import gc
    import weakref

    from widgets.state import SubjectCache

    class Model:  # a stand-in for a loaded Subject: only its identity and lifetime matter here
        pass

    loads = []

    def load(model, **kwargs):
        loads.append((model, kwargs))
        return Model()

    cache = SubjectCache(load)
    first = cache.get("toy-base", "toy-base-sae")
    assert cache.get("toy-base", "toy-base-sae") is first and len(loads) == 1
    assert cache.get("toy-base", "toy-base-sae", "cpu") is not first and len(cache) == 2  # another placement
    ref = weakref.ref(first)
    del first
    cache.clear()
    gc.collect()
    assert len(cache) == 0 and ref() is None  # nothing else held it: the model is gone
