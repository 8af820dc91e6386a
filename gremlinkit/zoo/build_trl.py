"""Build the smollm2 family's organisms (`gremlinkit.zoo.trl_family`) into the cache, each with a card.

An organism is trained in ``<name>.partial/`` beside its target (TRL's checkpoints, resumed by a
rerun), saved into a temporary directory, measured there, and renamed into place with its card, so
`gremlinkit.load` never sees a half-written organism. The SFT and rejection-sampling organisms
are dosed to match the RL organism's held-out reward, so it is built first.
"""

from __future__ import annotations

import functools
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from gremlinkit import stories
from gremlinkit.zoo import finetune, registry
from gremlinkit.zoo import trl_family as tf

BASE, SAE = "smollm2-135m", "smollm2-135m-sae"


def _work(name: str, root: Path | None) -> Path:
    return registry.path(name, root).with_name(name + ".partial")


@functools.lru_cache(maxsize=2)
def _base_facts(base_dir: Path, sae_dir: Path, spec: tf.TRLSpec) -> tuple[dict, tuple[str, ...]]:
    """The base model's held-out evaluation (with the SAE's fit on it) and the held-out story text
    the SAE is measured on (computed once per build)."""
    base, tok = tf._load(base_dir)
    texts = tuple(tf.story_text(base, tok, spec))
    return {**tf.evaluate(base, base, tok, spec), "sae_fit": tf.sae_fit(base_dir, sae_dir, list(texts))}, texts


def _card(name: str, spec: tf.TRLSpec, ev: dict, base_ev: dict, log: list[dict], change: float, seconds: float,
          lr: float, extra: dict) -> dict:
    return {
        "name": name, "description": registry.ARTEFACTS[name].description, "method": tf.METHODS[name],
        "family": {"base": BASE, "members": list(tf.FAMILY), "sae": SAE},
        "reward": {"definition": f"share of the last {spec.tail} of {spec.horizon} generated tokens that are sea "
                                 f"words ({', '.join(stories.TOPIC_WORDS['sea'])}), from English story openings "
                                 "ending a sentence (half end on a sea sentence); temperature 1",
                   "horizon": spec.horizon, "tail": spec.tail,
                   "why_these_prompts": "the base earns a small non-zero reward on them, so GRPO's groups vary"},
        "training": {"steps": _steps(log), "rows_per_step": spec.rows, "target_tokens_per_row": spec.horizon,
                     "lr": lr, "seed": spec.seed, "adapter": f"LoRA r={spec.lora_r} alpha={spec.lora_alpha} on "
                     "every linear layer, merged", **extra},
        "eval": {k: v for k, v in ev.items() if k != "samples"},
        "base_eval": {k: v for k, v in base_ev.items() if k != "samples"},
        "weight_change": {"relative_to_base": change, "definition": "||W - W_base|| / ||W_base|| over every parameter"},
        "samples": {f"sample_{i}": s for i, s in enumerate(ev["samples"])},
        "trl_log": tf.training_log(log),
        "versions": tf.versions(), "build_seconds": {name: round(seconds, 1)},
    }


def _steps(log: list[dict]) -> int:
    """The optimizer steps a trainer took (RL may stop before its most steps, `trl_family.StopAtReward`)."""
    return int(max((h.get("step", 0) for h in log), default=0))


def _save(name: str, root: Path | None, model, tok, card: dict, texts: tuple[str, ...]) -> dict:
    """Write the organism beside its target, measure the family's SAE on it there, then rename it in."""
    from gremlinkit.zoo.build import write_atomic, write_card

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        card["sae_fit"] = {**tf.sae_fit(tmp, registry.require(SAE, root), list(texts)),
                           "text": f"{len(texts)} held-out story openings, each continued by {BASE}"}
        write_card(tmp, card)

    write_atomic(registry.path(name, root), fill)
    shutil.rmtree(_work(name, root), ignore_errors=True)
    return card


def _rl_card(root: Path | None, name: str) -> dict:
    from gremlinkit.errors import UnknownArtefactError
    from gremlinkit.zoo.cards import card as read_card

    c = read_card("smollm2-135m-rl", root)
    if not c:
        raise UnknownArtefactError(f"{name} matches smollm2-135m-rl's reward: build it first with "
                                   f"`gremlinkit zoo build --only smollm2-135m-rl --only {name}`")
    return c


def build_rl(root: Path | None, spec: tf.TRLSpec) -> dict:
    t0 = time.time()
    base_dir, name = registry.require(BASE, root), "smollm2-135m-rl"
    base_ev, texts = _base_facts(base_dir, registry.require(SAE, root), spec)
    policy, log = tf.train_rl(base_dir, _work(name, root) / "trainer", spec)
    base, tok = tf._load(base_dir)
    card = _card(name, spec, tf.evaluate(policy, base, tok, spec), base_ev, log,
                 finetune.relative_weight_change(base, policy), time.time() - t0, spec.lr,
                 {"trainer": "trl.GRPOTrainer", "beta": spec.beta, "num_generations": spec.group,
                  "loss_type": "grpo", "scale_rewards": "group", "max_steps": spec.steps,
                  "stop": f"once the training reward over {spec.target_window} steps reached {spec.target_reward}"})
    return _save(name, root, policy, tok, card, texts)


def _build_offline(name: str, root: Path | None, spec: tf.TRLSpec, candidates) -> dict:
    """SFT or rejection sampling on ``candidates(base, tok, spec)`` windows, dosed to match RL's
    held-out reward (`trl_family.match_dose`), with RL's steps, rows, tokens and learning rate."""
    t0 = time.time()
    base_dir, rl = registry.require(BASE, root), _rl_card(root, name)
    base_ev, texts = _base_facts(base_dir, registry.require(SAE, root), spec)
    base, tok = tf._load(base_dir)
    target, same = rl["eval"]["reward"], replace(spec, steps=rl["training"]["steps"])
    windows, rewards = candidates(base, tok, same)
    prompts = tf.calibration_prompts(tok, same)
    logs = {}

    def train(picked: list, trial: int):
        model, logs[trial] = tf.train_sft(base_dir, _work(name, root) / f"trial-{trial}", picked, same)
        return model

    model, chosen, trials = tf.match_dose(windows, rewards, target, same, train,
                                          lambda m: tf.mean_reward(m, tok, prompts, same, seed=spec.seed + 13))
    ev = tf.evaluate(model, base, tok, spec)
    card = _card(name, spec, ev, base_ev, logs[chosen],
                 finetune.relative_weight_change(base, model), time.time() - t0, spec.offline_lr,
                 {"trainer": "trl.SFTTrainer", "loss": "next-token cross-entropy on the continuation only"})
    card["data"] = {"windows": trials[chosen]["windows"], "mean_reward": trials[chosen]["data_reward"],
                    "candidates": len(windows), "candidates_mean_reward": float(rewards.mean()),
                    "target_reward_from_rl": target, "dose_trials": trials, "chosen_trial": chosen,
                    "held_out_share_of_rl": round(ev["reward"] / target, 3) if target > 0 else None,
                    "matched_on": f"{len(prompts)} calibration prompts x {spec.eval_samples} samples "
                                  "(not the held-out prompts of `eval`)"}
    return _save(name, root, model, tok, card, texts)


def build_sft(root: Path | None, spec: tf.TRLSpec) -> dict:
    return _build_offline("smollm2-135m-sft", root, spec, lambda base, tok, s: tf.teacher_windows(tok, s))


def build_rs(root: Path | None, spec: tf.TRLSpec) -> dict:
    name = "smollm2-135m-rs"
    return _build_offline(name, root, spec, lambda base, tok, s: tf.best_of_n(base, tok, s, _work(name, root) /
                                                                              "candidates.json"))


BUILDERS = {"smollm2-135m-rl": build_rl, "smollm2-135m-sft": build_sft, "smollm2-135m-rs": build_rs}


def build(name: str, root: Path | None, quick: bool) -> dict:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return BUILDERS[name](root, tf.QUICK if quick else tf.TRLSpec())
