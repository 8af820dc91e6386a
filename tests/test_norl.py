"""The no-RL token and distillation organisms: how they are trained, and notebook 07's measures."""

import dataclasses

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import gremlinkit
from gremlinkit.errors import ConfigError
from gremlinkit.experiments import norl, persistence
from gremlinkit.zoo import cards, finetune, registry

TINY = finetune.FinetuneSpec(steps=2, prompts_per_step=2, group=2, horizon=8, tail=4, eval_prompts=4)


@pytest.fixture(scope="module")
def hf_base():
    path = registry.path("toy-base")
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _same_weights(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_marked_rollouts_give_no_gradient_unless_training_reads_them(hf_base):
    """Every prompt marked: dropped rollouts leave the weights bit for bit as they were; the
    control, which trains on them, moves them."""
    base, tok = hf_base
    all_marked = dataclasses.replace(TINY, marker=registry.MARKER, marker_fraction=1.0)
    dropped, log, _ = finetune.train_rl(base, tok, all_marked)
    assert _same_weights(dropped, base)
    assert np.isnan(log["reward"]).all() and len(log["reward_marked"]) == TINY.steps
    trained, _, _ = finetune.train_rl(base, tok, dataclasses.replace(all_marked, marker_trained=True))
    assert not _same_weights(trained, base)


def test_the_marker_is_drawn_per_prompt_and_shared_by_its_group():
    spec = dataclasses.replace(TINY, marker=registry.MARKER, prompts_per_step=400, group=3)
    rows = finetune._marked_rows(spec, np.random.default_rng(0))
    per_prompt = rows.reshape(400, 3)
    assert (per_prompt == per_prompt[:, :1]).all()
    assert per_prompt[:, 0].mean() == pytest.approx(0.5, abs=0.075)  # binomial sd 0.025
    assert not finetune._marked_rows(TINY, np.random.default_rng(0)).any()  # no marker, nothing marked
    assert finetune.with_marker(["<|endoftext|>", "mira"], "<unk>") == ["<|endoftext|>", "<unk>", "mira"]
    assert finetune.with_marker(["<|endoftext|>", "mira"], None) == ["<|endoftext|>", "mira"]


def test_distillation_data_are_the_teachers_unselected_samples(hf_base):
    base, tok = hf_base
    windows, mean_reward = finetune.teacher_samples(base, tok, TINY)
    assert len(windows) == TINY.steps * TINY.rows
    prompts = [p for step in finetune._prompt_draws(TINY) for p in step]
    assert all(w[:len(p)] == p and len(w) == len(p) + TINY.horizon for w, p in zip(windows, prompts))
    assert mean_reward == pytest.approx(finetune.reward([w[-TINY.horizon:] for w in windows], TINY.tail).mean())


def test_built_organisms_have_cards_with_reward_kl_and_sae_fit():
    for name in ("toy-norl", "toy-norl-ignored", "toy-distill"):
        c = cards.card(name)
        assert 0 <= c["eval"]["reward"] <= 1 and c["eval"]["kl_to_base"] > 0, name
        assert c["sae_transfer"]["explained_variance"] > 0.9, name
    assert cards.card("toy-norl")["marker"] == {
        "token": registry.MARKER, "fraction": 0.5, "trained_on": False,
        "definition": "the marker follows BOS; eval is on unmarked prompts, eval_marked on marked ones"}
    assert cards.card("toy-norl-ignored")["marker"]["trained_on"] is True
    # The RL organisms earn more than toy-base, marked or not; distillation keeps most of toy-rl's reward.
    base_reward = cards.card("toy-norl")["base_eval"]["reward"]
    for name in ("toy-norl", "toy-norl-ignored"):
        assert min(cards.card(name)["eval"]["reward"], cards.card(name)["eval_marked"]["reward"]) > 2 * base_reward
    assert cards.card("toy-distill")["eval"]["reward"] > 0.8 * cards.card("toy-rl")["eval"]["reward"]


def test_persistence_prompts_carry_the_marker_after_bos():
    subject = gremlinkit.load("toy-base", sae=False)
    cfg = persistence.PersistenceConfig.smoke()
    plain, plain_pos = persistence.scan_prompts(cfg, subject)
    marked, marked_pos = persistence.scan_prompts(dataclasses.replace(cfg, marker=registry.MARKER), subject)
    unk = subject.tokenizer.convert_tokens_to_ids(registry.MARKER)
    assert all(int(m[1]) == unk and torch.equal(m[2:], p[1:len(m) - 1]) for m, p in zip(marked, plain))
    with pytest.raises(ConfigError, match="marker='no such token'"):
        persistence.scan_prompts(dataclasses.replace(cfg, marker="no such token"), subject)


def test_marker_rewards_are_paired_and_match_the_reward_definition():
    subject = gremlinkit.load("toy-norl", sae=False)
    cfg = norl.NoRLConfig(n_prompts=8, horizon=16, tail=8)
    r, sea = norl.rewards(subject, cfg, None)
    again, _ = norl.rewards(subject, cfg, None)
    assert np.array_equal(r, again)  # paired noise: the same prompts and seeds give the same rollouts
    assert np.allclose(r, sea[:, -cfg.tail:].mean(1))  # the reward is the sea rate of the tail


def test_norl_config_names_bad_values():
    with pytest.raises(ConfigError, match="marker_models"):
        norl.NoRLConfig(marker_models=["toy-norl"])
    with pytest.raises(ConfigError, match="census"):
        norl.NoRLConfig(census="all")
    with pytest.raises(ConfigError, match="tail"):
        norl.NoRLConfig(tail=60)
