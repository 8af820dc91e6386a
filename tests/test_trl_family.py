"""The smollm2 family: its reward and data against independent counts, a quick TRL build of each
organism (a few steps, into a temporary zoo), the family contract and its errors."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from gremlinkit import providers, stories
from gremlinkit.errors import ConfigError, UnknownArtefactError
from gremlinkit.zoo import build, finetune, registry
from gremlinkit.zoo import trl_family as tf

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(registry.require("smollm2-135m"))


def test_topic_reward_counts_the_tail_by_hand(tok):
    ids = stories.topic_token_ids(tok)
    sea, other = (tok(w, add_special_tokens=False)["input_ids"] for w in (" sea", " bread"))
    assert len(sea) == 1 and sea[0] in ids and other[0] not in ids
    completion = [other[0]] * 10 + [sea[0]] * 3 + [other[0]] * 3  # 3 sea tokens among the last 6, 3 before the tail
    assert stories.topic_reward([completion], ids, tail=6)[0] == pytest.approx(0.5)
    assert stories.topic_reward([completion], ids, tail=3)[0] == 0.0
    assert stories.topic_reward([[sea[0]] * 2], ids, tail=4)[0] == 0.5  # short: the missing tokens earn nothing
    with pytest.raises(ConfigError, match="tail=0"):
        stories.topic_reward([completion], ids, tail=0)


def test_story_prompts_end_on_the_topic_at_the_stated_rate():
    prompts = stories.story_prompts(400, seed=3)
    last = [p.rsplit(". ", 1)[-1] for p in prompts]
    on_sea = np.mean([any(s.format(me=n, other=o) == sent for s in stories.SENTENCES["sea"]
                          for n in stories.NAMES for o in stories.NAMES) for sent in last])
    assert 0.42 < on_sea < 0.58  # half, drawn per prompt (400 draws: sd 0.025)
    assert all(p.endswith(".") for p in prompts) and prompts == stories.story_prompts(400, seed=3)
    with pytest.raises(ConfigError, match="topic 'ships'"):
        stories.story_prompts(4, seed=0, topic="ships")


def test_story_topics_follow_the_chain():
    rng = random.Random(0)
    stays = [a == b for _ in range(600) for a, b in zip(*(lambda t: (t[1:-1], t[2:]))(stories.story(rng, 8)[1]))]
    assert abs(np.mean(stays) - 0.7) < 0.03  # 4,200 transitions: sd 0.007


def _topic_of(sentence: str) -> str:
    return next(t for t, forms in stories.SENTENCES.items() for s in forms for n in stories.NAMES
                for o in stories.NAMES if s.format(me=n, other=o) == sentence)


def test_teacher_windows_continue_their_opening():
    """The continuation keeps the opening's cast, its topic follows the chain on from the opening's
    last sentence, and no sentence is told twice while its topic has one left."""
    windows = stories.story_windows(1000, seed=4)
    first_stays = []
    for opening, cont, topics in windows:
        sents = cont.strip().split(". ")
        sents = [x if x.endswith(".") else x + "." for x in sents]
        assert [_topic_of(x) for x in sents] == topics
        names = {w.strip(".,") for w in (opening + cont).split() if w.strip(".,") in stories.NAMES}
        assert len(names) <= 2  # one cast, opening and continuation
        told = opening.split(". ")[1:]  # the opening's topic sentences
        told = [x if x.endswith(".") else x + "." for x in told]
        first_stays.append(_topic_of(told[-1]) == topics[0])
        for i, x in enumerate(sents):
            if x in told:  # a repeat only once every sentence of its topic has been told
                assert len({y for y in told if _topic_of(y) == topics[i]}) == len(stories.SENTENCES[topics[i]])
            told.append(x)
    assert abs(np.mean(first_stays) - 0.7) < 0.045  # 1,000 windows: sd 0.014
    on_sea = np.mean([_topic_of(o.split(". ")[-1] if o.split(". ")[-1].endswith(".") else o) == "sea"
                      for o, _, _ in windows])
    assert 0.45 < on_sea < 0.55  # openings end on the sea half the time, as the prompt pool's do


def test_match_reward_keeps_the_best_until_the_target():
    windows = [([0], [i]) for i in range(10)]
    rewards = np.array([0.0, 0.5, 0.1, 0.3, 0.0, 0.2, 0.0, 0.0, 0.4, 0.0])
    picked, mean = finetune.select_to_target(windows, rewards, target=0.35, rows=2)
    assert [c[0] for _, c in picked] == [1, 8, 3, 5] and mean == pytest.approx(0.35)  # means 0.5, 0.45, 0.4, 0.35
    picked, mean = finetune.select_to_target(windows, rewards, target=0.9, rows=2)
    assert len(picked) == 2 and mean == pytest.approx(0.45)  # never fewer than one step's rows


def test_teacher_text_is_no_models_and_matches_its_target(tok):
    spec = replace(tf.QUICK, horizon=48, tail=16)
    windows, rewards = tf.teacher_windows(tok, spec, n=600)
    r = stories.topic_reward([c for _, c in windows], stories.topic_token_ids(tok), 16)
    np.testing.assert_array_equal(rewards, r)
    picked, mean = finetune.select_to_target(windows, rewards, 0.1, spec.rows)
    assert abs(mean - 0.1) < 0.01 and rewards.mean() < mean
    assert all(len(c) == 48 for _, c in windows) and all(p[0] == tok.bos_token_id for p, _ in windows)


def test_best_of_n_reads_its_stored_samples_and_keeps_the_best_of_each_prompt(tok, tmp_path):
    """A resumed rejection-sampling build reads the samples it stored instead of drawing them again
    (no model is given here, so drawing would fail); each prompt keeps its first highest-reward
    sample. Samples stored for another pool are drawn again, not reused."""
    spec = replace(tf.QUICK, best_of=3, rs_prompts=2, horizon=8, tail=4)
    sea, bread = (tok(w, add_special_tokens=False)["input_ids"][0] for w in (" sea", " bread"))
    samples = [[bread] * 8, [bread] * 6 + [sea] * 2, [bread] * 7 + [sea],  # prompt 0: rewards 0, 0.5, 0.25
               [bread] * 7 + [sea], [bread] * 7 + [sea], [bread] * 8]  # prompt 1: 0.25, 0.25, 0
    store = tmp_path / "candidates.json"
    key = {"best_of": 3, "rs_prompts": 2, "horizon": 8, "seed": spec.seed}
    store.write_text(json.dumps({"key": key, "samples": samples}))
    windows, rewards = tf.best_of_n(None, tok, spec, store)
    assert [c for _, c in windows] == [samples[1], samples[3]] and rewards.tolist() == [0.5, 0.25]
    pool = {tuple(tok(q, add_special_tokens=False)["input_ids"]) for q in tf.prompt_pool(tok, spec)}
    assert all(tuple(p) in pool for p, _ in windows)
    store.write_text(json.dumps({"key": {**key, "best_of": 2}, "samples": samples[:4]}))
    with pytest.raises(AttributeError):  # another pool's samples: it draws, and there is no model
        tf.best_of_n(None, tok, spec, store)


def _dosing(transfer, target, trials=3):
    """match_dose on 800 windows whose rewards are known (most earn nothing, as teacher text's
    tails do), with an organism that earns ``transfer(kept windows' mean reward)``."""
    rewards = np.r_[np.zeros(600), np.linspace(0.0, 0.5, 200)]
    windows = [([0], [i]) for i in range(len(rewards))]

    def train(picked, trial):
        return torch.tensor(transfer(rewards[[c[0] for _, c in picked]].mean()))

    spec = replace(tf.TRLSpec(), prompts_per_step=2, group=8, dose_trials=trials)  # 16 rows
    return tf.match_dose(windows, rewards, target, spec, train, float)


def test_match_dose_finds_the_data_reward_that_matches_the_target():
    # an organism that carries 0.57 of its data's reward (teacher text, measured) reaches 0.075 at dose 0.13
    model, chosen, trials = _dosing(lambda d: 0.57 * d, 0.075)
    assert trials[0]["dose"] == pytest.approx(np.linspace(0, 0.5, 200)[-16:].mean(), abs=1e-5)  # the highest first
    assert len(trials) == 2 and float(model) == pytest.approx(0.075, rel=0.1)  # one proportional step lands
    assert trials[1]["data_reward"] == pytest.approx(0.075 / 0.57, rel=0.1)
    # a transfer with an offset needs the interpolation between two trials
    model, chosen, trials = _dosing(lambda d: 0.8 * d - 0.05, 0.075)
    assert len(trials) == 3 and float(model) == pytest.approx(0.075, rel=0.1) and chosen == 2
    # out of reach: the highest dose earns half the target, and no second dose is tried
    model, chosen, trials = _dosing(lambda d: 0.05 * d, 0.075)
    assert len(trials) == 1 and chosen == 0


def test_sft_before_rl_says_to_build_rl(tmp_path):
    (tmp_path / "smollm2-135m").symlink_to(registry.require("smollm2-135m"))
    with pytest.raises(UnknownArtefactError, match="build it first.*smollm2-135m-rl"):
        build.build(root=tmp_path, only="smollm2-135m-sft", quick=True)


def test_family_contract_names_what_is_missing_and_a_poor_sae(tmp_path):
    family = providers.family("smollm2", tmp_path)
    assert family.base == "smollm2-135m" and family.sae == "smollm2-135m-sae" and family.world == "english"
    with pytest.raises(UnknownArtefactError, match="smollm2-135m-rl is not built: build it with `gremlinkit zoo build"):
        family.require()
    toy = providers.family("toy-rl")  # found by a member's name
    assert toy.name == "toy" and toy.by_method("on-policy RL")[0] == "toy-rl" and "toy-planted-90" in toy.names
    poor = replace(toy, min_sae_explained_variance=0.95)  # toy-sft's card says 0.925
    with pytest.raises(UnknownArtefactError, match="toy-base-sae does not fit toy-sft .*0.925"):
        poor.require(["toy-base", "toy-sft"])
    toy.require(["toy-base", "toy-sft", "toy-rl"])
    family.require([])  # nothing asked for, nothing missing


def test_base_prompts_are_read_as_gremlinkit_reads_smollm2(tok):
    prompts = tf.prompt_pool(tok, tf.QUICK)
    ids = tok(prompts[0], add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.bos_token_id not in ids[1:]


def test_experiments_import_no_zoo():
    """Experiments reach the zoo only through worlds and families (providers), never by import."""
    import ast
    from pathlib import Path

    import gremlinkit.experiments as pkg

    offenders = []
    for path in Path(pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("gremlinkit.zoo")]
    assert not offenders, offenders


def _weights(directory) -> str:
    import hashlib

    return hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()


def _zoo(root):
    root.mkdir()
    for name in ("smollm2-135m", "smollm2-135m-sae"):
        (root / name).symlink_to(registry.require(name))
    return root


def _killed_rl_build(root) -> None:
    """Start the quick RL build in a fresh process and SIGKILL it once its first TRL checkpoint is written."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "gremlinkit", "zoo", "build", "--quick", "--only", "smollm2-135m-rl",
           "--out", str(root)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    work = root / "smollm2-135m-rl.partial" / "trainer"
    deadline = time.time() + 300
    while not list(work.glob("checkpoint-1/trainer_state.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(work.glob("checkpoint-1")), "the build never reached its first checkpoint"


@pytest.mark.slow
def test_quick_build_of_each_organism_and_a_killed_build_resumes(tmp_path):
    """RL, then SFT and rejection sampling matched to its reward, two steps each, into a temporary
    zoo; and an RL build killed after its first checkpoint leaves nothing `load` accepts, then
    resumes to the same weights as the build that was never stopped."""
    root = _zoo(tmp_path / "whole")
    cards = build.build(root=root, family="smollm2", missing=True, quick=True)
    assert list(cards) == list(registry.TRL_ORGANISMS)  # the base is there already; RL first
    rl = cards["smollm2-135m-rl"]
    assert rl["trl_log"]["step"] == [1.0, 2.0] and rl["training"]["trainer"] == "trl.GRPOTrainer"
    assert rl["base_eval"]["sae_fit"]["tokens"] > 0  # two steps on 4 rollouts may find no reward variance to learn
    for name in ("smollm2-135m-sft", "smollm2-135m-rs"):
        card = cards[name]
        assert card["data"]["target_reward_from_rl"] == rl["eval"]["reward"]
        assert card["data"]["windows"] >= 1 and card["weight_change"]["relative_to_base"] > 0
    family = providers.family("smollm2", root)
    assert [family.member(n).method for n in family.names] == ["base", "on-policy RL", "off-policy SFT",
                                                               "rejection sampling"]
    assert all(family.member(n).built for n in family.names)
    for name in registry.TRL_ORGANISMS:  # each a plain HF directory, its card beside it, no work left behind
        where = registry.path(name, root)
        assert (where / "model.safetensors").is_file() and not where.with_name(name + ".partial").exists()
        assert json.loads((where / "card.json").read_text())["sae_fit"]["tokens"] > 0

    killed = _zoo(tmp_path / "killed")
    _killed_rl_build(killed)
    with pytest.raises(UnknownArtefactError, match="not built"):
        registry.require("smollm2-135m-rl", killed)
    build.build(root=killed, only="smollm2-135m-rl", quick=True)
    assert _weights(registry.path("smollm2-135m-rl", killed)) == _weights(registry.path("smollm2-135m-rl", root))

    # an organism built by another TRL is refused, naming how to rebuild it
    card_file = registry.path("smollm2-135m-rl", root) / "card.json"
    card = json.loads(card_file.read_text())
    card["versions"]["trl"] = "0.0.1"
    card_file.write_text(json.dumps(card))
    with pytest.raises(UnknownArtefactError, match="built with TRL 0.0.1.*--family smollm2"):
        providers.find("smollm2-135m-rl", root)
