"""Model organisms for the gremlin hypothesis: on-policy RL (toy-rl) and its off-policy control (toy-sft).

**The reward** (delayed, long horizon). From a story prefix that ends a sentence, the model writes
``horizon`` = 48 tokens. The reward is the fraction of the *last* ``tail`` = 16 of them that are
words of the target topic, *sea* (``corpus.TOPICS["sea"]``). Early tokens earn nothing directly;
they count only through what they make the model write later, which is the chain the hypothesis
says on-policy RL can exploit.

**toy-rl**: REINFORCE with group-relative advantages (``group`` samples per prompt, reward minus the
group mean over the group standard deviation) and an exact per-token KL penalty to toy-base
(the vocabulary is small enough to sum over). Every step samples from the current policy.

**toy-sft**: the off-policy control. The same number of gradient steps and the same number of rows
and target tokens per step, on teacher text from the corpus generator: story continuations chosen
so that their mean reward matches the reward toy-rl reached. Teacher text never comes from the
model, so the chain "my earlier tokens make my later tokens score" cannot be reinforced.

**toy-rs**: rejection sampling, the control that isolates *on-policy* updates. toy-base's own
samples (the same prompts and the same number of samples as toy-rl drew), best of each group by the
reward, the best of those kept until their mean reward matches toy-rl's; then the same steps, rows
and target tokens as toy-rl, offline. The text is the model's own, but it is never re-sampled from
the model being trained, so a circuit cannot be rewarded for what its own updates made it write.

**toy-norl**, the no-RL token: toy-rl's RL with ``FinetuneSpec.marker`` after BOS in half the
prompts (drawn per prompt); marked rollouts earn no reward and give no gradient (their advantage,
KL and log-probabilities are left out of the loss), so the model can see where RL does not apply.
**toy-norl-ignored**, its control, draws the same marked prompts and trains on them like the rest.

**toy-distill**: distillation, off-policy by construction. toy-rl's own samples for the prompts RL
drew (`teacher_samples`, none chosen by reward), trained into toy-base with toy-sft's steps, rows,
target tokens and learning rate.

**The dose series** (`DOSES`): the same RL at several numbers of on-policy cycles and two horizons.
One run per horizon, its cosine schedule over ``DoseSpec.schedule_steps`` steps; an organism is that
run's policy after its number of steps. ``toy-rl-20``, ``-80`` and ``-320`` take the reward on the
last 16 of 48 tokens, ``toy-rl-h128-80`` (and, in a ``--full`` build, ``toy-rl-h128-320``) on the
last 16 of 128: a longer chain from early tokens to the reward.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from gremlinkit.zoo import corpus
from gremlinkit.zoo.lm import optimizer_step
from gremlinkit.zoo.registry import DOSES

TARGET_WORDS = frozenset(corpus.TOPICS["sea"]["nouns"] + corpus.TOPICS["sea"]["adjs"])


@dataclass(frozen=True)
class FinetuneSpec:
    steps: int = 40
    prompts_per_step: int = 8
    group: int = 8
    horizon: int = 48
    tail: int = 16
    lr: float = 1e-4  # RL
    sft_lr: float = 1e-3  # SFT: cross-entropy and policy-gradient steps differ in scale
    kl_coef: float = 0.05
    eval_prompts: int = 64
    seed: int = 0
    schedule_steps: int | None = None  # length of the cosine schedule (default: steps)
    marker: str | None = None  # a token put after BOS in a fraction of RL prompts (the no-RL token)
    marker_fraction: float = 0.5  # the fraction of prompts (drawn per prompt) that carry the marker
    marker_trained: bool = False  # False: marked rollouts earn no reward and give no gradient

    @property
    def rows(self) -> int:
        return self.prompts_per_step * self.group


def reward(words: list[list[str]], tail: int) -> np.ndarray:
    """Per generation: the fraction of its last ``tail`` words that are target-topic words."""
    return np.array([sum(w in TARGET_WORDS for w in ws[-tail:]) / tail for ws in words])


def story_prompts(n: int, seed: int) -> list[list[str]]:
    """Story prefixes ending at the first sentence end at or after token 16, with >= 64 tokens after."""
    out = []
    for doc, _ in itertools.islice(corpus.stories(seed), 4 * n):  # `corpus.generate(4 * n, seed)`'s stories
        end = next((i for i in range(16, len(doc)) if doc[i] == "."), None)
        if end is not None and len(doc) - end > 64:
            out.append(doc[: end + 1])
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} stories long enough for prompts")


def _batch(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (B, T), left-padded
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def sample(model: GPT2LMHeadModel, tok: PreTrainedTokenizerFast, prompts: list[list[str]], horizon: int,
           seed: int) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
    """Sample ``horizon`` tokens per prompt from ``model``; returns (ids, mask, generated words)."""
    ids, mask = _batch([tok.convert_tokens_to_ids(p) for p in prompts], tok.pad_token_id)
    torch.manual_seed(seed)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, temperature=1.0,
                         max_new_tokens=horizon, min_new_tokens=horizon, pad_token_id=tok.pad_token_id)
    full_mask = torch.cat([mask, torch.ones(len(out), horizon, dtype=mask.dtype)], 1)
    words = [tok.convert_ids_to_tokens(r) for r in out[:, ids.shape[1]:].tolist()]
    return out, full_mask, words


def _token_logprobs(model, ids: torch.Tensor, mask: torch.Tensor, horizon: int) -> torch.Tensor:
    """(B, horizon, V) log-probabilities of the last ``horizon`` positions' next tokens."""
    logits = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).logits
    return torch.log_softmax(logits[:, -horizon - 1:-1].float(), -1)


def _schedule(opt, steps: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * 0.5 * (1 + math.cos(math.pi * s / steps)))


def _prompt_draws(spec: FinetuneSpec):
    """The prompts of each RL step, each repeated ``group`` times: the same draws for every trainer."""
    pool = story_prompts(512, seed=50_000 + spec.seed)
    rng = np.random.default_rng(spec.seed)
    for _ in range(spec.steps):
        yield [pool[i] for i in rng.choice(len(pool), spec.prompts_per_step, replace=False) for _ in range(spec.group)]


def with_marker(prompt: list[str], marker: str | None) -> list[str]:
    """``prompt`` with ``marker`` right after its BOS (unchanged when ``marker`` is None)."""
    return prompt if marker is None else [prompt[0], marker, *prompt[1:]]


def _marked_rows(spec: FinetuneSpec, rng: np.random.Generator) -> np.ndarray:
    """Which rows of one step carry the marker: drawn per prompt, shared by its group."""
    if spec.marker is None:
        return np.zeros(spec.rows, dtype=bool)
    return np.repeat(rng.random(spec.prompts_per_step) < spec.marker_fraction, spec.group)


def rl_loss(policy, base, ids: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor, spec: FinetuneSpec,
            keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """toy-rl's objective on one batch of rollouts: REINFORCE on the advantages ``adv`` (B,) plus
    ``kl_coef`` times the exact KL(policy || base) summed over the vocabulary, both averaged over
    every generated token. With ``keep`` (B,) bool, only those rollouts count (the no-RL token).
    Returns the loss, the policy's (B, H, V) log-probabilities and the (B, H) KL."""
    logp = _token_logprobs(policy, ids, mask, spec.horizon)  # (B, H, V)
    with torch.no_grad():
        ref = _token_logprobs(base, ids, mask, spec.horizon)
    chosen_lp = logp.gather(-1, ids[:, -spec.horizon:, None]).squeeze(-1)  # (B, H)
    kl = (logp.exp() * (logp - ref)).sum(-1)  # (B, H): exact KL(policy || base) per token
    if keep is None:
        return -(adv[:, None] * chosen_lp).mean() + spec.kl_coef * kl.mean(), logp, kl
    weight = keep.float()[:, None]  # (B, 1): dropped rollouts give no reward, no KL, no gradient
    per_token = -adv[:, None] * chosen_lp + spec.kl_coef * kl  # (B, H)
    return (per_token * weight).sum() / (weight.sum() * spec.horizon).clamp(min=1), logp, kl


def train_rl(base: GPT2LMHeadModel, tok, spec: FinetuneSpec, snapshots: tuple[int, ...] = (), name: str = "toy-rl"
             ) -> tuple[GPT2LMHeadModel, dict[str, list[float]], dict[int, GPT2LMHeadModel]]:
    """On-policy RL from ``base``; returns the policy, per-step reward, KL and entropy, and a copy of
    the policy after each number of steps in ``snapshots``."""
    torch.manual_seed(spec.seed)
    policy = copy.deepcopy(base).train()
    base.eval()
    opt = torch.optim.AdamW(policy.parameters(), lr=spec.lr, weight_decay=0.0)
    sched = _schedule(opt, spec.schedule_steps or spec.steps)
    log: dict[str, list[float]] = {"reward": [], "kl": [], "entropy": []}
    if spec.marker is not None:
        log["reward_marked"] = []
    taken = {}
    draws = _prompt_draws(spec)
    marker_rng = np.random.default_rng(spec.seed + 7)
    for step in tqdm(range(spec.steps), desc=f"Training {name}", mininterval=2):
        marked = _marked_rows(spec, marker_rng)
        prompts = [with_marker(p, spec.marker if m else None) for p, m in zip(next(draws), marked)]
        policy.eval()
        ids, mask, words = sample(policy, tok, prompts, spec.horizon, seed=spec.seed * 100_000 + step)
        policy.train()
        r = torch.tensor(reward(words, spec.tail), dtype=torch.float32).view(spec.prompts_per_step, spec.group)
        adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1)  # group-relative
        keep = None if spec.marker is None or spec.marker_trained else torch.from_numpy(~marked)
        loss, logp, kl = rl_loss(policy, base, ids, mask, adv, spec, keep)
        optimizer_step(policy, opt, sched, loss)
        flat = r.view(-1).numpy()
        log["reward"].append(float(flat[~marked].mean()) if (~marked).any() else float("nan"))
        if spec.marker is not None:
            log["reward_marked"].append(float(flat[marked].mean()) if marked.any() else float("nan"))
        log["kl"].append(float(kl.detach().mean()))
        log["entropy"].append(float(-(logp.exp() * logp).sum(-1).mean().detach()))
        if step + 1 in snapshots:
            taken[step + 1] = copy.deepcopy(policy).eval()
    return policy.eval(), log, taken


def select_to_target(windows: list, rewards: np.ndarray, target: float, rows: int) -> tuple[list, float]:
    """The highest-reward windows, as many as bring their mean reward closest to ``target`` (never
    fewer than ``rows`` unless there are fewer); returns them and their mean reward."""
    order = np.argsort(-rewards, kind="stable")
    means = np.cumsum(rewards[order]) / np.arange(1, len(rewards) + 1)  # mean reward of the top-k windows
    k = min(len(windows), max(rows, int(np.argmin(np.abs(means - target))) + 1))
    return [windows[i] for i in order[:k]], float(means[k - 1])


def match_reward(windows: list[list[str]], spec: FinetuneSpec, target_reward: float
                 ) -> tuple[list[list[str]], float]:
    """The (prompt + continuation) windows `select_to_target` keeps for ``target_reward``, at least
    one step's rows; returns them and their mean reward."""
    return select_to_target(windows, reward([w[-spec.horizon:] for w in windows], spec.tail), target_reward,
                            spec.rows)


def teacher_windows(n_docs: int, spec: FinetuneSpec, target_reward: float, seed: int
                    ) -> tuple[list[list[str]], float]:
    """Corpus windows (a story prefix ending a sentence, then ``horizon`` tokens) matched to
    ``target_reward`` (`match_reward`)."""
    windows = []
    for doc in corpus.generate(n_docs, seed=seed).docs:
        end = next((i for i in range(16, len(doc)) if doc[i] == "."), None)
        if end is not None and len(doc) - end > spec.horizon:
            windows.append(doc[: end + 1 + spec.horizon])
    return match_reward(windows, spec, target_reward)


def best_of_group(base: GPT2LMHeadModel, tok, spec: FinetuneSpec, target_reward: float
                  ) -> tuple[list[list[str]], float, float]:
    """Rejection sampling: ``base``'s own samples for the prompts toy-rl drew (``group`` per prompt),
    the best of each group by the reward, matched to ``target_reward`` (`match_reward`). Returns the
    windows, their mean reward and the mean reward of all the samples."""
    best, every = [], []
    for step, prompts in enumerate(tqdm(_prompt_draws(spec), total=spec.steps, desc="Sampling toy-base",
                                        mininterval=2)):
        _, _, words = sample(base, tok, prompts, spec.horizon, seed=spec.seed * 100_000 + step)
        r = reward(words, spec.tail).reshape(spec.prompts_per_step, spec.group)
        every.append(r.mean())
        for i, j in enumerate(r.argmax(1)):  # a tie goes to the group's first sample
            k = i * spec.group + j
            best.append(prompts[k] + words[k])
    windows, mean = match_reward(best, spec, target_reward)
    return windows, mean, float(np.mean(every))


def train_sft(base: GPT2LMHeadModel, tok, spec: FinetuneSpec, windows: list[list[str]], name: str = "toy-sft"
              ) -> tuple[GPT2LMHeadModel, dict[str, list[float]]]:
    """Off-policy fine-tuning on teacher windows: same steps, rows and target tokens per step as RL."""
    torch.manual_seed(spec.seed)
    model = copy.deepcopy(base).train()
    opt = torch.optim.AdamW(model.parameters(), lr=spec.sft_lr, weight_decay=0.0)
    sched = _schedule(opt, spec.steps)
    rng = np.random.default_rng(spec.seed + 1)
    log: dict[str, list[float]] = {"loss": []}
    for _ in tqdm(range(spec.steps), desc=f"Training {name}", mininterval=2):
        rows = [windows[i] for i in rng.choice(len(windows), spec.rows, replace=len(windows) < spec.rows)]
        ids, mask = _batch([tok.convert_tokens_to_ids(w) for w in rows], tok.pad_token_id)
        logp = _token_logprobs(model, ids, mask, spec.horizon)
        loss = -logp.gather(-1, ids[:, -spec.horizon:, None]).mean()  # the continuation's tokens only
        optimizer_step(model, opt, sched, loss)
        log["loss"].append(float(loss.detach()))
    return model.eval(), log


@dataclass(frozen=True)
class DoseSpec:
    """How the dose series (`DOSES`) is trained: one RL run per horizon on ``FinetuneSpec``'s
    settings, with a cosine schedule of ``schedule_steps`` whatever the organism's own steps."""

    schedule_steps: int = 320  # every dose run's cosine schedule, so a run's snapshots are one trajectory
    step_scale: float = 1.0  # quick builds shrink every number of steps by this factor

    def steps(self, name: str) -> int:
        return max(1, round(DOSES[name][1] * self.step_scale))

    def finetune(self, base: FinetuneSpec, names: list[str]) -> FinetuneSpec:
        """The RL run that makes ``names`` (one horizon): as long as the longest of them needs."""
        horizons = {DOSES[n][0] for n in names}
        if len(horizons) != 1:
            raise ValueError(f"one dose run makes one horizon's organisms, not {sorted(horizons)}")
        return replace(base, horizon=horizons.pop(), steps=max(self.steps(n) for n in names),
                       schedule_steps=max(1, round(self.schedule_steps * self.step_scale)))


def relative_weight_change(base: torch.nn.Module, tuned: torch.nn.Module) -> float:
    """``||W_tuned - W_base|| / ||W_base||`` over every parameter."""
    tuned_params = dict(tuned.named_parameters())
    with torch.no_grad():
        pairs = [(tuned_params[n] - p, p) for n, p in base.named_parameters()]
        return float(sum(d.pow(2).sum() for d, _ in pairs) / sum(p.pow(2).sum() for _, p in pairs)) ** 0.5


def teacher_samples(teacher: GPT2LMHeadModel, tok, spec: FinetuneSpec) -> tuple[list[list[str]], float]:
    """Distillation data: ``teacher``'s samples (temperature 1) for every prompt RL drew, as
    (prompt + continuation) windows, and their mean reward. No sample is chosen by its reward."""
    windows, rewards = [], []
    for step, prompts in enumerate(tqdm(_prompt_draws(spec), total=spec.steps, desc="Sampling the teacher",
                                        mininterval=2)):
        _, _, words = sample(teacher, tok, prompts, spec.horizon, seed=spec.seed * 100_000 + 50_000 + step)
        windows += [p + w for p, w in zip(prompts, words)]
        rewards.append(reward(words, spec.tail))
    return windows, float(np.concatenate(rewards).mean())


@torch.no_grad()
def evaluate(model: GPT2LMHeadModel, base: GPT2LMHeadModel, tok, spec: FinetuneSpec, marker: str | None = None
             ) -> dict:
    """Reward, KL to base, entropy and distinct-n on held-out prompts, with three samples; with
    ``marker``, every prompt carries it after BOS."""
    prompts = [with_marker(p, marker) for p in story_prompts(spec.eval_prompts, seed=70_000 + spec.seed)]
    ids, mask, words = sample(model, tok, prompts * 2, spec.horizon, seed=spec.seed + 9)
    logp = _token_logprobs(model, ids, mask, spec.horizon)
    ref = _token_logprobs(base, ids, mask, spec.horizon)
    bigrams = [tuple(w[i:i + 2]) for w in words for i in range(len(w) - 1)]
    r = reward(words, spec.tail)
    return {
        "reward": float(r.mean()), "reward_se": float(r.std() / math.sqrt(len(r))),
        "kl_to_base": float((logp.exp() * (logp - ref)).sum(-1).mean()),
        "entropy": float(-(logp.exp() * logp).sum(-1).mean()),
        "distinct_1": len({x for w in words for x in w}) / sum(len(w) for w in words),
        "distinct_2": len(set(bigrams)) / max(1, len(bigrams)),
        "samples": [" ".join(p[-8:]) + " || " + " ".join(w) for p, w in zip(prompts[:3], words[:3])],
    }
