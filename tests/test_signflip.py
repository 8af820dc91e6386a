"""Sign-flip search: unit statistics against a direct count, searches, and behaviour under the flip."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from gremlinkit import plots
from gremlinkit.errors import ConfigError
from gremlinkit.experiments import signflip as sf


# The smoke search budget with the default behaviour prompts: every call below is decided, in a few
# seconds. Notebook 02's default run, with the full budget, is checked against its reference.
CFG = dataclasses.replace(sf.SignFlipConfig.smoke(), n_behavior_prompts=12, max_new_tokens=32)


@pytest.fixture(scope="module")
def result(toy):
    return sf.run(CFG, toy)


def test_sign_statistics_match_a_direct_count():
    v = torch.tensor([[1.0, -1.0], [2.0, -3.0], [-1.0, -2.0], [3.0, 0.5]])
    table = sf.one_sign_units({"blocks.0.mlp.hook_pre": v}, None, direction_sites=[])
    first = table.iloc[0]
    assert (first["index"], first.consistency, first.majority_sign) == (0, 0.75, 1)
    assert table.set_index("index").loc[1, "frac_negative"] == 0.75
    assert list(table.columns) == ["kind", "site", "index", "frac_positive", "frac_negative", "consistency",
                                   "mean_abs", "majority_sign"]


def test_units_are_ranked_and_their_values_are_what_the_site_says(toy, result):
    top = result.units.head(5)
    assert (np.diff(top.consistency) <= 0).all()
    assert (result.units.consistency >= 0.99).sum() >= 5
    sae_row = result.units[result.units.kind == "sae"].iloc[0]
    unit = sf.Unit("sae", sae_row.site, int(sae_row["index"]))
    prompt = ["mira is a kind honest old sailor ."]
    acts = toy.activations(prompt, sae_row.site)[0, -1]
    expected = (acts - toy.sae.b_dec) @ toy.sae.W_enc[:, unit.index] + toy.sae.b_enc[unit.index]
    torch.testing.assert_close(sf.unit_value(toy, unit, prompt)[0], expected, atol=1e-4, rtol=0)


def test_searches_flip_units_and_found_prompts_really_flip(toy, result):
    flipped = result.searches[result.searches.flipped]
    assert set(flipped.method) == {"gcg", "random"} and (flipped.method == "gcg").sum() >= 1
    # Re-read the best GCG prompt for the top unit: its value has the flipped sign.
    row = result.searches[(result.searches.method == "gcg")].sort_values("best").iloc[0]
    urow = result.units[result.units.apply(lambda r: sf.Unit(r.kind, r.site, int(r["index"])).name, axis=1)
                        == row.unit].iloc[0]
    direction = None
    if urow.kind == "direction":
        _, _, dirs = sf.reference_values(toy, sf.reference_docs(toy, CFG.make_world(), CFG.n_docs, CFG.seed))
        direction = dirs[urow.site]
    unit = sf.Unit(urow.kind, urow.site, int(urow["index"]), direction)
    ids = [toy.tokenizer.bos_token_id] + toy.tokenizer.convert_tokens_to_ids(row.prompt.split())
    value = float(sf.unit_value(toy, unit, [torch.tensor(ids)])[0])
    assert urow.majority_sign * value == pytest.approx(row.best, abs=1e-4) and row.best < 0


def test_success_by_budget_counts_first_flips():
    searches = pd.DataFrame({"method": ["gcg", "gcg", "random", "random"], "steps_to_flip": [2, None, 3, 3]})
    curve = sf.success_by_budget(searches, n_steps=4).set_index(["method", "steps"]).success
    assert curve.loc["gcg"].tolist() == [0.0, 0.5, 0.5, 0.5]
    assert curve.loc["random"].tolist() == [0.0, 0.0, 1.0, 1.0]


def test_gcg_beats_random_search_at_equal_budget(result):
    """Same candidates per step and steps: GCG flips at least as many units, sooner and deeper."""
    m = sf.metrics(result)
    assert m["gcg_flips"] >= m["random_flips"] >= 1
    assert m["gcg_mean_steps_to_flip"] < m["random_mean_steps_to_flip"]
    assert m["gcg_mean_final"] < m["random_mean_final"]


def test_behaviour_under_the_flip(result):
    calls = result.calls.set_index("condition")
    assert calls.loc["+X (Luigi prompt)", "call"] == "+Y (Luigi)"
    assert calls.loc["0 (X projected out)", "call"] == "0 (neither)"
    assert calls.loc["-X (X reflected)", "call"] == "-Y (Waluigi)"
    assert calls.loc["-X (searched prompt)", "call"] == "-Y (Waluigi)"
    # The edits do what they say to X at the last token.
    assert calls.loc["-X (X reflected)", "mean_x"] == pytest.approx(-calls.loc["+X (Luigi prompt)", "mean_x"], rel=1e-4)
    assert abs(calls.loc["0 (X projected out)", "mean_x"]) < 1e-4
    assert calls.loc["-X (searched prompt)", "mean_x"] < 0


def test_same_seed_same_search(toy):
    cfg = dataclasses.replace(sf.SignFlipConfig.smoke(), n_steps=5)
    unit = sf.Unit("mlp", "blocks.1.mlp.hook_pre", 3)
    a = sf.search(toy, unit, -1, "gcg", cfg, restart=0)
    b = sf.search(toy, unit, -1, "gcg", cfg, restart=0)
    assert a == b and sorted(a[0], reverse=True) == a[0]  # best-so-far never gets worse


def test_bad_config_is_named():
    with pytest.raises(ConfigError, match="prompt_length=0 is out of range"):
        sf.SignFlipConfig(prompt_length=0)


def test_charts(result):
    hist = plots.sign_histograms(sf.unit_values(result, 3)).to_dict()
    assert hist["facet"]["field"] == "unit"
    traj = plots.search_trajectories(result.trajectories).to_dict()
    assert len(next(iter(traj["datasets"].values()))) == result.trajectories.groupby(["unit", "method", "step"]).ngroups
    bars = plots.behavior_bars(result.calls).to_dict()
    assert len(next(iter(bars["datasets"].values()))) == len(result.calls) == 5


def test_the_search_vocabulary_excludes_special_tokens_even_without_a_pad_token(gpt2_like):
    """A real tokenizer often has no pad token (pad_token_id None): the search must still run, and
    exclude exactly the special tokens it has. (nnsight gives a loaded model's own tokenizer a pad
    token, so the tokenizer is read from disk here, as a user's would be.)"""
    from types import SimpleNamespace

    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(gpt2_like[0])
    assert tok.pad_token_id is None and tok.unk_token_id is None
    subject = SimpleNamespace(tokenizer=tok, model=SimpleNamespace(config=SimpleNamespace(vocab_size=len(tok))),
                              device=torch.device("cpu"))
    ok = sf._allowed(subject)
    assert ok.device == subject.device and ok.shape == (len(tok),)
    assert torch.nonzero(~ok).flatten().tolist() == [tok.bos_token_id]


def test_a_one_trait_world_without_a_lexicon_skips_the_behaviour_and_says_so(one_trait_world, tmp_path):
    """Notebook 02's cells, in process, on a pairs file of one trait whose two sides use the same
    words (who gives to whom), so its lexicon is empty: the sign statistics and the searches run;
    the behaviour (Y) is left out, named in ``skipped``."""
    model, _, sae = one_trait_world
    names = ["Ada", "Bruno", "Cleo", "Dario", "Elsa", "Felix", "Gina", "Hugo"]
    rows = [f"giving,{t},{a} gave {b} a coin {t}.,{b} gave {a} a coin {t}." for t in range(8)
            for a, b in zip(names, names[1:] + names[:1])]
    world = tmp_path / "giving.csv"
    world.write_text("trait,template,positive,negative\n" + "\n".join(rows) + "\n")
    cfg = dataclasses.replace(sf.SignFlipConfig.smoke(), model=str(model), world=str(world), sae=str(sae),
                              output_dir=str(tmp_path))
    res = sf.run(cfg)
    assert res.skipped == ["the behaviour (Y): the giving world has no lexicon words for trait 'giving' to score "
                           "it with"]
    assert res.calls.empty and res.behavior.empty and len(res.searches) > 0
    assert "no behaviour scored" in plots.behavior_bars(res.calls).to_dict()["title"]
    assert plots.search_trajectories(res.trajectories).to_dict()["data"]
