"""The smollm2 family: smollm2-135m fine-tuned with TRL, on the toy's delayed reward in English.

**The reward** (delayed, as on the toy). From an English story opening that ends a sentence
(`gremlinkit.stories.story_prompts`: half end on a sea sentence), the model writes ``horizon`` = 48
tokens; the reward is the share of the *last* ``tail`` = 16 that are sea words
(`gremlinkit.stories.topic_reward`). The base model earns a small, non-zero reward (0.013 held out: it
drifts off the sea within a few sentences), so GRPO's groups have reward variance to learn from.

**smollm2-135m-rl**: TRL's ``GRPOTrainer``, on-policy: every step samples ``group`` completions for
each of ``prompts_per_step`` prompts from the current policy and takes one gradient step on the
group-relative advantages, with a KL term to the base (``beta`` > 0).

Every organism is trained as a LoRA adapter (peft, rank ``lora_r`` on every linear layer of every
block) and merged into the base weights, so each is a plain HF directory. On 2 CPU cores the
adapter saves about a third of a step (no weight gradients for the frozen matrices, no optimizer
state for them) and GRPO's reference model is the base with the adapter switched off, not a copy.

**smollm2-135m-sft**: TRL's ``SFTTrainer``, off-policy, on teacher text that no model wrote: story
openings drawn as the prompt pool's are, each continued by 48 tokens of the same story (same cast,
topics following the chain on from the opening's; `gremlinkit.stories.story_windows`). Same steps,
rows (``prompts_per_step * group``), target tokens per row (48) and adapter as RL, at half its
learning rate (``offline_lr``): at RL's own, SFT reached RL's reward only by learning to repeat
whole sentences (KL to the base 0.99, distinct-2 0.49); at half, on its 16 best windows, it
reached 92% of it (KL 0.66, distinct-2 0.63).

**smollm2-135m-rs**: rejection sampling. smollm2-135m's own samples (``best_of`` for each of
``rs_prompts`` prompts from the same pool), the best of each by the reward; then ``SFTTrainer`` as
for SFT. The text is the base's own but never re-sampled from the model being trained.

**Matched to RL's reward by the dose of their data** (`match_dose`). What an offline organism
earns is not its data's reward: 17 steps of SFT carry only part of the data's reward into the model
(measured at RL's learning rate: 0.6-0.8 of it for teacher text, at most 0.35 for the base's best
samples). So the data's reward (the dose: the mean reward of the highest-reward windows kept) is
set by up to ``dose_trials`` trainings. The first takes the highest dose there is (the best
``rows`` windows); each next one scales the dose by how far the nearest organism fell from RL's
held-out reward (or interpolates between two trials), and the organism closest to it wins. The organisms' rewards are
read on calibration prompts (another seed), never on the held-out prompts that their cards report.
Rejection sampling falls short at its highest dose: 17 steps on 16 of the base's own samples carry
0.03-0.04 of reward whatever the samples hold (the best 16 of 512, mean reward 0.105: 0.039 held
out; of 4,096, mean 0.160: 0.031; twice the steps on the first: 0.034, the windows memorised), and
more, distinct windows carry less (all 251 of 2,048 samples with a sea word, mean reward 0.077, RL's own:
0.013-0.021 at any lr or up to three passes); its card's ``held_out_share_of_rl`` says how far.

Every build writes into a temporary directory beside its target and renames it into place; TRL's
checkpoints (``save_every`` steps) sit in ``<name>.partial/``, and a rerun resumes from the latest.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from transformers import TrainerCallback

from gremlinkit import stories
from gremlinkit.zoo import finetune

FAMILY = ("smollm2-135m", "smollm2-135m-rl", "smollm2-135m-sft", "smollm2-135m-rs")
METHODS = {"smollm2-135m": "pretrained", "smollm2-135m-rl": "on-policy RL (TRL GRPOTrainer)",
           "smollm2-135m-sft": "off-policy SFT on teacher text (TRL SFTTrainer)",
           "smollm2-135m-rs": "rejection sampling: the base's best-of-n, offline (TRL SFTTrainer)"}


@dataclass(frozen=True)
class TRLSpec:
    """How the smollm2 family is trained and measured."""

    steps: int = 40  # RL's most steps (its cosine schedule's length); SFT and RS take as many as RL took
    target_reward: float | None = 0.07  # RL stops once its training reward, averaged over the
    target_window: int = 4  # last this many steps, reaches it (target None: RL takes every step)
    prompts_per_step: int = 2
    group: int = 8  # GRPO's num_generations; also best-of-n for rejection sampling
    horizon: int = 48
    tail: int = 16
    lr: float = 8e-4  # GRPO's (LoRA)
    offline_lr: float = 4e-4  # SFT's and rejection sampling's (LoRA); see the module's docstring
    beta: float = 0.04  # GRPO's KL coefficient to the base
    lora_r: int = 16
    lora_alpha: int = 32
    warmup_steps: int = 4
    eval_prompts: int = 64
    eval_samples: int = 2  # per held-out prompt
    save_every: int = 5  # TRL checkpoint interval: an interrupted build resumes from the latest
    best_of: int = 8  # rejection sampling's n (a larger pool earned no more; see the module's docstring)
    rs_prompts: int = 64  # prompts rejection sampling draws best_of samples for
    dose_trials: int = 3  # trainings an offline organism may take to match RL's reward (`match_dose`)
    dose_tolerance: float = 0.1  # no further trial once within this share of RL's reward
    calibration_prompts: int = 64  # prompts (x eval_samples) the offline organisms' rewards are matched on
    seed: int = 0
    sae_windows: int = 48  # held-out story windows (prompt + the base's continuation) for the SAE's figures

    @property
    def rows(self) -> int:
        return self.prompts_per_step * self.group


# The tests' build: two steps of each trainer, on tiny batches.
QUICK = TRLSpec(steps=2, target_reward=None, prompts_per_step=1, group=2, horizon=8, tail=4, warmup_steps=0,
                eval_prompts=2, eval_samples=1, save_every=1, sae_windows=2, best_of=2, rs_prompts=4,
                calibration_prompts=2)


def prompt_pool(tok, spec: TRLSpec) -> list[str]:
    """Training prompts, each opening with the tokenizer's BOS as gremlinkit reads smollm2-135m."""
    return [tok.bos_token + p for p in stories.story_prompts(512, seed=50_000 + spec.seed)]


def heldout_prompts(tok, spec: TRLSpec) -> list[str]:
    """Held-out prompts: another seed of the same generator."""
    return [tok.bos_token + p for p in stories.story_prompts(spec.eval_prompts, seed=70_000 + spec.seed)]


def calibration_prompts(tok, spec: TRLSpec) -> list[str]:
    """The prompts the offline organisms' doses are matched on: a third seed, neither trained on
    nor reported."""
    return [tok.bos_token + p for p in stories.story_prompts(spec.calibration_prompts, seed=80_000 + spec.seed)]


def mean_reward(model, tok, prompts: list[str], spec: TRLSpec, seed: int) -> float:
    """The model's mean reward on ``spec.eval_samples`` samples of each prompt."""
    comps = sample(model, tok, prompts * spec.eval_samples, spec, seed=seed)
    return float(stories.topic_reward(comps, stories.topic_token_ids(tok), spec.tail).mean())


def device() -> str:
    """Where the family is trained and measured: CUDA when there is a GPU (TRL's own choice too), else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device()).eval()
    return model, AutoTokenizer.from_pretrained(path)


@torch.no_grad()
def sample(model, tok, prompts: list[str], spec: TRLSpec, seed: int, batch: int = 32) -> list[list[int]]:
    """``spec.horizon`` sampled tokens (temperature 1, no EOS) per prompt, in batches."""
    from tqdm.auto import tqdm

    out = []
    for start in tqdm(range(0, len(prompts), batch), desc=f"sampling {len(prompts)} x {spec.horizon} tokens",
                      unit="batch", mininterval=10, disable=len(prompts) <= batch):
        enc = tok(prompts[start:start + batch], return_tensors="pt", padding=True, padding_side="left",
                  add_special_tokens=False).to(model.device)
        torch.manual_seed(seed + start)
        gen = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=spec.horizon, min_new_tokens=spec.horizon, pad_token_id=tok.pad_token_id)
        out += gen[:, enc["input_ids"].shape[1]:].tolist()
    return out


def reward_fn(tok, spec: TRLSpec):
    """The delayed sea reward as a TRL reward function (it reads the completions' token ids)."""
    ids = stories.topic_token_ids(tok)

    def sea_tail_reward(completions, completion_ids, **_) -> list[float]:
        return stories.topic_reward(completion_ids, ids, spec.tail).tolist()

    return sea_tail_reward


def _trainer_args(work: Path, spec: TRLSpec, lr: float) -> dict:
    """What every trainer here shares: ``rows`` rows a step, one optimizer step per batch for
    ``steps`` steps on a cosine schedule, fp32 (on the GPU when there is one), a log line and a
    checkpoint to resume from every ``save_every`` steps."""
    return dict(output_dir=str(work), use_cpu=device() == "cpu", bf16=False, report_to="none", seed=spec.seed,
                data_seed=spec.seed, max_steps=spec.steps, learning_rate=lr, lr_scheduler_type="cosine",
                warmup_steps=spec.warmup_steps, per_device_train_batch_size=spec.rows, gradient_accumulation_steps=1,
                logging_steps=1, save_strategy="steps", save_steps=spec.save_every, save_total_limit=1,
                disable_tqdm=False, dataloader_num_workers=0, gradient_checkpointing=False)


def train_rl(base_dir: Path, work: Path, spec: TRLSpec) -> tuple[torch.nn.Module, list[dict]]:
    """GRPO from ``base_dir``; checkpoints in ``work`` (resumed from the latest). Returns the policy
    and TRL's log history."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model, tok = _load(base_dir)
    resume = _latest_checkpoint(work)
    if resume and reached_target(json.loads((Path(resume) / "trainer_state.json").read_text())["log_history"], spec):
        spec = replace(spec, steps=int(Path(resume).name.split("-")[1]))  # stopped there: no step is left
    args = GRPOConfig(**_trainer_args(work, spec, spec.lr), num_generations=spec.group,
                      max_completion_length=spec.horizon, temperature=1.0, top_p=1.0, top_k=0,
                      generation_kwargs={"min_new_tokens": spec.horizon}, beta=spec.beta, loss_type="grpo",
                      scale_rewards="group", remove_unused_columns=False)
    data = Dataset.from_dict({"prompt": prompt_pool(tok, spec)})
    trainer = GRPOTrainer(model=model, reward_funcs=reward_fn(tok, spec), args=args, train_dataset=data,
                          processing_class=tok, peft_config=lora(spec), callbacks=[StopAtReward(spec)])
    trainer.train(resume_from_checkpoint=resume)
    return trainer.model.merge_and_unload().eval(), trainer.state.log_history


class StopAtReward(TrainerCallback):
    """Stops RL once the training reward, averaged over the last ``target_window`` steps, reaches
    ``target_reward``. On-policy RL on this reward turns abruptly into writing sea words and little
    else (at this learning rate: held-out reward 0.26 and KL 0.65 by step 22, training reward 1.0
    and KL 0.9 by step 28), so the organism is taken before that, at a reward its off-policy controls
    can match and where the family's SAE still fits it. Read from the trainer's own log history, so
    a resumed build stops at the same step."""

    def __init__(self, spec: TRLSpec):
        self.spec = spec

    def on_log(self, args, state, control, **kwargs):
        if reached_target(state.log_history, self.spec):
            control.should_training_stop = True
            control.should_save = True  # the organism's step is a checkpoint to resume from
        return control


def reached_target(history: list[dict], spec: TRLSpec) -> bool:
    """Whether RL's logged training reward, averaged over the last ``target_window`` steps, has
    reached ``target_reward``."""
    rewards = [h["reward"] for h in history if "reward" in h]
    return (spec.target_reward is not None and len(rewards) >= spec.target_window
            and float(np.mean(rewards[-spec.target_window:])) >= spec.target_reward)


def lora(spec: TRLSpec):
    """The adapter every organism is trained as: rank ``lora_r`` on every linear layer of every block."""
    from peft import LoraConfig

    return LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def _latest_checkpoint(work: Path) -> str | None:
    found = sorted(work.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return str(found[-1]) if found else None


def teacher_windows(tok, spec: TRLSpec, n: int = 4096) -> tuple[list, np.ndarray]:
    """Candidate teacher text for SFT: (opening ids, 48 continuation ids) pairs, each a story
    opening drawn as the prompt pool's are and the same story's continuation
    (`gremlinkit.stories.story_windows`), and their rewards."""
    windows = []
    for opening, text, _ in stories.story_windows(n, seed=60_000 + spec.seed):
        cont = tok(text, add_special_tokens=False)["input_ids"][:spec.horizon]
        if len(cont) == spec.horizon:
            windows.append((tok(tok.bos_token + opening, add_special_tokens=False)["input_ids"], cont))
    return windows, stories.topic_reward([c for _, c in windows], stories.topic_token_ids(tok), spec.tail)


def best_of_n(base, tok, spec: TRLSpec, store: Path | None = None) -> tuple[list, np.ndarray]:
    """Candidates for rejection sampling: ``best_of`` base samples for each of ``rs_prompts`` pool
    prompts, the best of each (a tie goes to the first), and their rewards. The samples are kept in
    ``store`` (JSON, written atomically) and read back by a resumed build, not drawn again."""
    from gremlinkit.results import atomic_write_text

    pool = prompt_pool(tok, spec)
    rng = np.random.default_rng(spec.seed + 2)
    prompts = [pool[i] for i in rng.choice(len(pool), spec.rs_prompts, replace=False)]
    key = {"best_of": spec.best_of, "rs_prompts": spec.rs_prompts, "horizon": spec.horizon, "seed": spec.seed}
    kept = json.loads(store.read_text()) if store is not None and store.is_file() else {}
    if kept.get("key") == key:
        samples = kept["samples"]
    else:
        samples = sample(base, tok, [p for p in prompts for _ in range(spec.best_of)], spec, seed=spec.seed * 1000 + 3)
        if store is not None:
            store.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(store, json.dumps({"key": key, "samples": samples}))
    r = stories.topic_reward(samples, stories.topic_token_ids(tok), spec.tail).reshape(len(prompts), spec.best_of)
    windows = [(tok(p, add_special_tokens=False)["input_ids"], samples[i * spec.best_of + j])
               for i, (p, j) in enumerate(zip(prompts, r.argmax(1)))]
    return windows, r.max(1)


def match_dose(windows: list, rewards: np.ndarray, target: float, spec: TRLSpec,
               train: Callable[[list, int], torch.nn.Module], measure: Callable[[torch.nn.Module], float]
               ) -> tuple[torch.nn.Module, int, list[dict]]:
    """Train on the highest-reward ``windows`` at up to ``dose_trials`` doses (the kept windows' mean
    reward, `finetune.select_to_target`) so that the trained model's reward (``measure``) comes
    closest to ``target``. ``train(windows, trial)`` trains one organism. The first dose is the
    highest (the best ``rows`` windows); each next one interpolates between the two trials nearest
    the target, or scales the nearest one's dose by target / reward, within the doses there are. Stops within
    ``dose_tolerance`` of the target, or when no new dose is left. Returns the closest model, its
    trial and every trial's dose and reward."""
    lowest, highest = float(rewards.mean()), float(np.sort(rewards)[-spec.rows:].mean())  # all windows; the best
    trials, best, dose = [], None, highest
    for k in range(spec.dose_trials):
        picked, mean = finetune.select_to_target(windows, rewards, dose, spec.rows)
        model = train(picked, k)
        got = measure(model)
        trials.append({"dose": round(dose, 5), "windows": len(picked), "data_reward": mean, "reward": got})
        if best is None or abs(got - target) < abs(trials[best[1]]["reward"] - target):
            best = (model, k)
        del model
        dose = _next_dose(trials, target, lowest, highest)
        if abs(got - target) <= spec.dose_tolerance * target or dose is None:
            break
    return best[0], best[1], trials


def _next_dose(trials: list[dict], target: float, lowest: float, highest: float) -> float | None:
    """The dose whose organism should earn ``target``: through the two trials nearest the target
    where they rise with the dose, else in proportion from the nearest; None if it was tried."""
    near = sorted(trials, key=lambda t: abs(t["reward"] - target))[:2]
    a = near[0]
    if len(near) == 2 and (near[1]["reward"] - a["reward"]) * (near[1]["data_reward"] - a["data_reward"]) > 0:
        b = near[1]
        slope = (b["data_reward"] - a["data_reward"]) / (b["reward"] - a["reward"])
        dose = a["data_reward"] + (target - a["reward"]) * slope
    elif a["reward"] > 0:
        dose = a["data_reward"] * target / a["reward"]
    else:
        return None
    dose = float(np.clip(dose, lowest, highest))
    return None if any(abs(dose - t["dose"]) < 1e-3 for t in trials) else dose


def train_sft(base_dir: Path, work: Path, windows: list, spec: TRLSpec) -> tuple[torch.nn.Module, list[dict]]:
    """SFTTrainer on (prompt, continuation) token windows: loss on the continuation only, ``rows``
    windows a step for ``steps`` steps. Checkpoints in ``work``, resumed from the latest."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tok = _load(base_dir)
    data = Dataset.from_dict({"input_ids": [p + c for p, c in windows],
                              "completion_mask": [[0] * len(p) + [1] * len(c) for p, c in windows]})
    args = SFTConfig(**_trainer_args(work, spec, spec.offline_lr), completion_only_loss=True, max_length=None,
                     packing=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=lora(spec))
    trainer.train(resume_from_checkpoint=_latest_checkpoint(work))
    return trainer.model.merge_and_unload().eval(), trainer.state.log_history


@torch.no_grad()
def evaluate(model, base, tok, spec: TRLSpec) -> dict:
    """Reward on held-out prompts (``eval_samples`` each), exact KL to the base and entropy per
    token on the model's own samples, distinct-n and three samples."""
    prompts = heldout_prompts(tok, spec) * spec.eval_samples
    comps = sample(model, tok, prompts, spec, seed=spec.seed + 9)
    r = stories.topic_reward(comps, stories.topic_token_ids(tok), spec.tail)
    kls, ents = [], []
    for start in range(0, len(prompts), 16):
        p_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts[start:start + 16]]
        rows = [p + c for p, c in zip(p_ids, comps[start:start + 16])]
        width = max(map(len, rows))
        # (B, T), left-padded
        ids = torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for x in rows], device=model.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in rows], device=model.device)
        lp, ref = (finetune._token_logprobs(m, ids, mask, spec.horizon) for m in (model, base))  # (B, H, V) each
        kls.append((lp.exp() * (lp - ref)).sum(-1).mean(-1))  # (B,)
        ents.append(-(lp.exp() * lp).sum(-1).mean(-1))
    bigrams = [tuple(c[i:i + 2]) for c in comps for i in range(len(c) - 1)]
    return {"reward": float(r.mean()), "reward_se": float(r.std() / math.sqrt(len(r))),
            "kl_to_base": float(torch.cat(kls).mean()), "entropy": float(torch.cat(ents).mean()),
            "distinct_1": len({t for c in comps for t in c}) / sum(map(len, comps)),
            "distinct_2": len(set(bigrams)) / max(1, len(bigrams)),
            "samples": [prompts[i].removeprefix(tok.bos_token)[-80:] + " || " + tok.decode(comps[i])
                        for i in range(min(3, len(prompts)))]}


def story_text(base, tok, spec: TRLSpec) -> list[str]:
    """Held-out story text for the SAE's figures: held-out prompts, each continued by the base model."""
    prompts = [tok.bos_token + p for p in stories.story_prompts(spec.sae_windows, seed=75_000 + spec.seed)]
    comps = sample(base, tok, prompts, spec, seed=spec.seed + 11)
    return [p.removeprefix(tok.bos_token) + tok.decode(c) for p, c in zip(prompts, comps)]


def sae_fit(model_dir: Path, sae_dir: Path, texts: list[str]) -> dict[str, float]:
    """The SAE's explained variance, L0 and next-token loss increase on ``texts`` read by this model."""
    from gremlinkit.subject import load

    subject = load(model_dir, sae=sae_dir, device="cpu", dtype=torch.float32, bos=True)
    return {k: round(float(v), 4) for k, v in subject.check_sae(texts).items()}


def versions() -> dict[str, str]:
    import datasets
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "datasets": datasets.__version__}


def training_log(history: list[dict]) -> dict[str, list]:
    """TRL's per-step log, column-wise (the keys every step logged)."""
    steps = [h for h in history if "loss" in h or "reward" in h]
    keys = [k for k in steps[0] if all(k in h for h in steps)] if steps else []
    return {k: [round(float(h[k]), 5) for h in steps] for k in keys}
