"""Controls where nothing is planted: the text edit, the feature edit and the random-direction null,
each recomputed independently (a teacher-forced re-read of the generated text), and the rule that
turns their figures into "no power"."""

import copy
import random

import numpy as np
import pandas as pd
import pytest
import torch

import gremlinkit
from gremlinkit import interventions as iv
from gremlinkit import stories
from gremlinkit.errors import ConfigError
from gremlinkit.prompts import encode
from gremlinkit.experiments import gremlins, natural, persistence


def test_neutral_sentences_name_no_topic_and_an_edit_changes_only_the_last_sentence():
    topic_words = {w for ws in stories.TOPIC_WORDS.values() for w in ws}
    for sentence in stories.NEUTRAL:
        words = set(sentence.format(me="Anna", other="Tom").lower().replace(",", "").rstrip(".").split())
        assert not words & topic_words, sentence
    edits = stories.text_edits(30, seed=3)
    assert edits == stories.text_edits(30, seed=3) and edits != stories.text_edits(30, seed=4)
    sea = set(stories.TOPIC_WORDS["sea"])
    for opening, neutral, edited in edits:
        assert any(w.strip(".,") in sea for w in edited.lower().split())  # the edit is about the sea
        told = opening.split(". ", 1)[1].lower().split()  # after the introduction: another topic's sentences
        assert not any(w.strip(".,") in sea for w in told)
        assert neutral.endswith(".") and edited.endswith(".")
    with pytest.raises(ConfigError, match="not one of the story topics"):
        stories.text_edits(2, 0, topic="space")


@torch.no_grad()
def _teacher_forced_pre(subject, prompt: torch.Tensor, generated: np.ndarray, edits=()) -> torch.Tensor:
    """The SAE pre-activations at the prompt's last token and each generated token but the last,
    read by one teacher-forced forward over the prompt and the generated text."""
    ids = torch.cat([prompt, torch.as_tensor(generated[:-1].astype(np.int64))])
    acts = subject.activations([ids], subject.sae_site, edits)[0, len(prompt) - 1:]  # (H+1, d)
    return subject.encode(acts, pre=True)


def test_text_edit_feature_edit_and_sentence_steer_rows_are_their_generated_runs_reread(toy):
    feature, scale, horizon = 5, 8.0, 6
    site, coeff = "blocks.1.hook_resid_pre", 3.0
    tables = natural.feature_controls(toy, "toy-base", feature, scale, n_prompts=3, horizon=horizon, seed=1,
                                      chunk_size=2, steer=(site, coeff))
    neutral, edited = natural.text_edit_prompts(toy, 3, seed=1)
    spans, direction = natural.neutral_spans(toy, 3, seed=1), natural.topic_direction(toy, site, seed=1)
    for role, prompts in (("text edit", edited), ("feature edit", neutral), ("sentence steer", neutral)):
        table = tables[role]
        assert len(table) == 3 * (horizon + 1) and set(table.lag) == set(range(horizon + 1))
        for r in range(3):
            rows = table[table.prompt_id == r].sort_values("lag")
            assert (rows.position == len(prompts[r]) - 1).all()
            edits = {"text edit": [], "feature edit": [iv.add(feature, scale, pos=len(prompts[r]) - 1)],
                     "sentence steer": [iv.steer(direction, coeff, site, pos=[spans[r]])]}[role]
            pre = _teacher_forced_pre(toy, prompts[r], rows.intervened_token.to_numpy(), edits)[:, feature]
            np.testing.assert_allclose(rows.intervened.to_numpy(), pre.numpy(), atol=1e-4)
            base = _teacher_forced_pre(toy, neutral[r], rows.token.to_numpy())[:, feature]
            np.testing.assert_allclose(rows.baseline.to_numpy(), base.numpy(), atol=1e-4)
    # The feature edit's direct effect is the push, read back by the encoder at lag 0.
    lag0 = tables["feature edit"][tables["feature edit"].lag == 0]
    w_enc, w_dec = toy.sae.W_enc.detach()[:, feature], toy.sae.W_dec.detach()[feature]
    np.testing.assert_allclose(lag0.delta, scale * float(w_enc @ w_dec), rtol=1e-3)


def test_a_random_direction_is_read_as_its_projection_and_starts_at_the_pushed_norm(toy):
    cfg = persistence.PersistenceConfig(horizon=8, n_prompts=3)
    prompts, positions = persistence.scan_prompts(cfg, toy)
    dirs = natural.random_directions(2, toy.d_model, seed=0)
    assert torch.allclose(dirs.norm(dim=1), torch.ones(2)) and torch.equal(dirs, natural.random_directions(2, toy.d_model, 0))
    table = natural.direction_null(toy, "toy-base", prompts, [p[0] for p in positions], dirs, norm=5.0, horizon=8,
                                   seed=0, chunk_size=4)
    assert len(table) == 2 * 3 * 9 and set(table.feature) == {0, 1}
    np.testing.assert_allclose(table[table.lag == 0].delta, 5.0, atol=1e-4)  # u . (x + 5u) - u . x
    for (k, p), rows in table.groupby(["feature", "prompt_id"]):
        rows = rows.sort_values("lag")
        pos = positions[p][0]
        ids = torch.cat([prompts[p][: pos + 1], torch.as_tensor(rows.intervened_token.to_numpy()[:-1].astype(np.int64))])
        with torch.no_grad():
            acts = toy.activations([ids], toy.sae_site, [iv.steer(dirs[k], 5.0, toy.sae_site, pos=pos)])[0, pos:]
        np.testing.assert_allclose(rows.intervened, (acts @ dirs[k]).numpy(), atol=1e-4)


def _controls(truth: float, edit: float, detected: bool, null_hits: int, n_null: int = 20) -> pd.DataFrame:
    rows = [{"model": "m", "role": "text edit", "feature": 7, "half_life": truth, "half_life_lo": truth / 2,
             "half_life_hi": truth * 2, "detected": True},
            {"model": "m", "role": "feature edit", "feature": 7, "half_life": edit, "half_life_lo": edit / 2,
             "half_life_hi": edit * 2, "detected": detected}]
    rows += [{"model": "m", "role": "random direction", "feature": k, "half_life": 0.1, "half_life_lo": 0.1,
              "half_life_hi": 0.1, "detected": k < null_hits} for k in range(n_null)]
    return pd.DataFrame(rows).reindex(columns=natural.COLUMNS)


@pytest.mark.parametrize("edit, detected, null_hits, reasons", [
    (10.0, True, 1, []),  # within 50% of 10, and 1/20 = 5% of the null: power
    (15.0, True, 0, []),  # the tolerance's edge
    (15.1, True, 0, ["not within 50%"]),
    (4.9, True, 0, ["not within 50%"]),
    (10.0, False, 0, ["not found persistent"]),
    (10.0, True, 2, ["detected in 10% of 20 directions"]),
])
def test_power_needs_the_control_near_its_truth_and_a_quiet_null(edit, detected, null_hits, reasons):
    figures = natural.power(_controls(10.0, edit, detected, null_hits), "m")
    assert figures["natural_control_truth"] == 10.0 and figures["random_directions"] == 20
    assert figures["random_direction_rate"] == null_hits / 20
    why = natural.no_power_reasons(figures)
    assert len(why) == len(reasons) and all(r in w for r, w in zip(reasons, why))
    table = pd.DataFrame([{"model": m, "persistent": k, "scanned": 32, "fraction": k / 32, "fraction_low": 0.0,
                           "fraction_high": 1.0, "median_half_life": 1.0}
                          for m, k in (("m", 1), ("m-rl", 12))])
    sentence, tests = gremlins.verdict(table, "m-rl", ("m",), base="m", figures=figures)
    assert tests["call"] == ("no power" if reasons else "support")
    assert "against its text-edit truth of 10.0 tokens" in sentence and "Random-direction null" in sentence


def test_a_world_without_topic_stories_takes_the_english_topics_and_no_planted_organisms():
    cfg = gremlins.GremlinConfig(model="smollm2-135m", models=[], dose_models=[], planted_seeds=0)
    assert cfg.story() is None and cfg.control_topic == "sea"
    with pytest.raises(ConfigError, match="planted organisms are the toy family's"):
        gremlins.GremlinConfig(model="smollm2-135m", models=[], dose_models=[], planted_seeds=1)
    with pytest.raises(ConfigError, match="control_topic='space'.*'garden'"):
        gremlins.GremlinConfig(model="smollm2-135m", models=[], dose_models=[], planted_seeds=0,
                               control_topic="space")
    with pytest.raises(ConfigError, match="random_directions=-1"):
        gremlins.GremlinConfig(random_directions=-1)


@pytest.fixture(scope="module")
def smol():
    return gremlinkit.load("smollm2-135m", dtype="bfloat16")


def test_the_topic_feature_marks_the_topic_in_stories_it_was_not_chosen_on(smol):
    feature = natural.topic_feature(smol, "sea", n_docs=40, seed=0)
    rng = random.Random("fresh")
    on, sea = [], []
    for _ in range(30):
        doc = [smol.tokenizer.bos_token_id]
        for k, (text, t) in enumerate(zip(*stories.story(rng, 8))):
            ids = smol.tokenizer((" " if k else "") + text, add_special_tokens=False)["input_ids"]
            doc += ids
            sea += [t == "sea"] * len(ids)
        on += (smol.features([torch.tensor(doc)])[0, 1:, feature] > 0).tolist()
    on, sea = np.array(on), np.array(sea)
    precision, base_rate = sea[on].mean(), sea.mean()
    assert base_rate < 0.3 and precision > 2 * base_rate  # it fires on sea sentences, chosen on other stories


def test_a_family_names_its_base_its_fine_tunes_and_the_controls_its_world_allows():
    cfg = gremlins.GremlinConfig(family="smollm2")
    assert (cfg.model, cfg.models, cfg.dose_models, cfg.planted_seeds) == (
        "smollm2-135m", ["smollm2-135m-sft", "smollm2-135m-rs", "smollm2-135m-rl"], [], 0)
    toy = gremlins.GremlinConfig(family="toy")  # the toy's defaults: its dose series stays in dose_models
    plain = gremlins.GremlinConfig()
    assert (toy.model, toy.models, toy.dose_models, toy.planted_seeds) == (
        plain.model, plain.models, plain.dose_models, plain.planted_seeds)
    with pytest.raises(ConfigError, match="family='smollm3'.*'smollm2'"):
        gremlins.GremlinConfig(family="smollm3")
    with pytest.raises(ConfigError, match="family='smollm2' and model='gpt2'.*'smollm2-135m'"):
        gremlins.GremlinConfig(family="smollm2", model="gpt2")


def _hf_last_block_and_logits(hf, ids: torch.Tensor, site_block: int, add: torch.Tensor | None, at_final: bool):
    """Plain transformers: the last block's output and the logits at the last token, with ``add``
    put on the input of block ``site_block`` (or on the last block's output) at that token."""
    out = {}

    def pre_hook(module, args, kwargs):
        h = args[0].clone()
        h[:, -1] += add.to(h.dtype)
        return (h, *args[1:]), kwargs

    def post_hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        if add is not None and at_final:
            h = h.clone()
            h[:, -1] += add.to(h.dtype)
            output = (h, *output[1:]) if isinstance(output, tuple) else h
        out["final"] = h[0, -1].float()
        return output

    blocks = hf.transformer.h
    hooks = [blocks[-1].register_forward_hook(post_hook)]
    if add is not None and not at_final:
        hooks.append(blocks[site_block].register_forward_pre_hook(pre_hook, with_kwargs=True))
    try:
        with torch.no_grad():
            logits = hf(ids[None]).logits[0, -1].float()
    finally:
        for h in hooks:
            h.remove()
    return out["final"], logits


def test_self_repair_reads_each_edit_as_plain_transformers_does(gpt2_like):
    """Survival and logit ratio of random-direction edits, recomputed with forward hooks on the
    transformers model (no nnsight), to 1e-4; at the final norm's own input nothing can repair, so
    both are 1 there."""
    from transformers import AutoModelForCausalLM

    model_dir, sae_dir = gpt2_like
    subject = gremlinkit.load(str(model_dir), sae=str(sae_dir))
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompts = [torch.tensor(subject.tokenizer(t)["input_ids"]) for t in ("the sea was calm today", "a song for the")]
    positions = [len(p) - 2 for p in prompts]
    dirs = natural.random_directions(3, subject.d_model, seed=5)
    table = natural.self_repair(subject, "m", prompts, positions, [], 0.0, dirs, 4.0)
    assert len(table) == 6 and set(table.role) == {"random direction"}
    for r in table.itertuples():
        ids = prompts[r.prompt][: positions[r.prompt] + 1]
        v = 4.0 * dirs[r.unit]
        clean_final, clean_logits = _hf_last_block_and_logits(hf, ids, 1, None, False)
        final, logits = _hf_last_block_and_logits(hf, ids, 1, v, False)  # the SAE's site: blocks.1.hook_resid_pre
        _, direct = _hf_last_block_and_logits(hf, ids, 1, v, True)
        survival = float((final - clean_final) @ v / (v @ v))
        d, dd = logits - clean_logits, direct - clean_logits
        assert r.survival == pytest.approx(survival, abs=1e-4)
        assert r.logit_ratio == pytest.approx(float(d @ dd / (dd @ dd)), abs=1e-4)
        assert r.edit_norm == pytest.approx(4.0, abs=1e-4)
    final_sae = copy.deepcopy(subject.sae)
    final_sae.cfg.metadata.hook_name = "blocks.1.hook_resid_post"  # the final norm's input
    subject.attach_sae(final_sae)
    at_final = natural.self_repair(subject, "m", prompts, positions, [3], 2.0, dirs, 4.0)
    assert np.allclose(at_final.survival, 1, atol=1e-5) and np.allclose(at_final.logit_ratio, 1, atol=1e-4)
    summary = natural.repair_summary(table)
    assert summary.edits.tolist() == [3] and summary.survival.iloc[0] == pytest.approx(
        table.groupby("unit").survival.mean().median())


def test_the_topic_direction_is_the_difference_of_sentence_means_in_transformers_hidden_states(toy):
    """`topic_direction` against transformers' own hidden states, prompt by prompt: the mean over the
    sea sentences' tokens minus the mean over the neutral sentences', after the same openings; and
    the neutral spans are exactly the tokens after each opening."""
    n, seed, layer = 6, 2, 1
    held = 61_000 + seed
    neutral, edited = natural.text_edit_prompts(toy, n, held)
    triples = stories.text_edits(n, 30_000 + held)
    means = []
    for prompts in (edited, neutral):
        rows = []
        for (opening, _, _), ids in zip(triples, prompts):
            start = len(encode(opening, toy.tokenizer, toy.prepends_bos))  # the opening as the prompt begins
            with torch.no_grad():
                hidden = toy.model._module(ids[None], output_hidden_states=True).hidden_states[layer][0]
            rows.append(hidden[start:].float())
        means.append(torch.cat(rows).mean(0))
    got = natural.topic_direction(toy, f"blocks.{layer}.hook_resid_pre", n=n, seed=seed)
    torch.testing.assert_close(got, means[0] - means[1], atol=1e-4, rtol=1e-4)
    spans = natural.neutral_spans(toy, n, held)
    assert [s[-1] + 1 for s in spans] == [len(p) for p in neutral] and all(len(s) >= 3 for s in spans)
