"""toy-rl's objective (`finetune.rl_loss`) against TRL's GRPO loss, on one fixed batch of rollouts.

On-policy with one update per batch, TRL's clipped ratio is exp(logp - logp.detach()) = 1 with
gradient grad logp, so its policy term is REINFORCE on the advantages, averaged over each
completion's tokens and then over completions: with equal lengths, the toy's mean over tokens. The KL
terms differ by design: the toy penalises the exact KL(policy || base) summed over the vocabulary at
every generated position; TRL penalises the k3 estimate exp(r) - r - 1 (r = log base - log policy)
of the sampled tokens alone, whose gradient is, in expectation over samples, that of KL(base || policy).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gremlinkit.zoo import finetune, registry

pytestmark = pytest.mark.filterwarnings("ignore")
BETA = 0.05


@pytest.fixture(scope="module")
def batch():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(registry.path("toy-base")).eval()
    policy = AutoModelForCausalLM.from_pretrained(registry.path("toy-rl")).eval()
    tok = AutoTokenizer.from_pretrained(registry.path("toy-base"))
    spec = finetune.FinetuneSpec(horizon=16, tail=8, group=8, prompts_per_step=1)
    prompt = finetune.story_prompts(1, seed=3)[0]
    ids, mask, words = finetune.sample(policy, tok, [prompt] * spec.group, spec.horizon, seed=5)  # one group
    r = torch.tensor(finetune.reward(words, spec.tail) + np.linspace(0, 0.07, spec.group), dtype=torch.float32)
    adv = (r - r.mean()) / (r.std() + 1e-4)  # group-relative, as both trainers compute it
    return base, policy, tok, spec, ids, mask, adv


def _grads(model, loss) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


def _trl_grad(base, policy, tok, spec, ids, mask, adv, beta):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(output_dir="/tmp/gremlinkit-trl-check", use_cpu=True, bf16=False, report_to="none",
                      beta=beta, num_generations=spec.group, per_device_train_batch_size=spec.group,
                      max_completion_length=spec.horizon, loss_type="grpo", gradient_checkpointing=False)
    trainer = GRPOTrainer(model=policy, reward_funcs=lambda completions, **_: [0.0] * len(completions), args=args,
                          train_dataset=Dataset.from_dict({"prompt": ["x"]}), processing_class=tok)
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    prompt_len = ids.shape[1] - spec.horizon
    with torch.no_grad():
        ref = torch.log_softmax(base(input_ids=ids).logits[:, prompt_len - 1:-1].float(), -1)
    inputs = {"prompt_ids": ids[:, :prompt_len], "prompt_mask": mask[:, :prompt_len],
              "completion_ids": ids[:, prompt_len:], "completion_mask": mask[:, prompt_len:], "advantages": adv,
              "ref_per_token_logps": ref.gather(-1, ids[:, prompt_len:, None]).squeeze(-1)}
    return _grads(trainer.model, trainer._compute_loss(trainer.model, inputs))


def _toy_grad(base, policy, spec, ids, mask, adv, kl_coef):
    from dataclasses import replace

    loss, _, _ = finetune.rl_loss(policy, base, ids, mask, adv, replace(spec, kl_coef=kl_coef))
    return _grads(policy, loss)


def _k3_grad(base, policy, spec, ids, mask, expected: bool = False):
    """The gradient of TRL's KL term, computed here: the mean over sampled tokens of k3 * ratio, or
    (``expected``) its expectation over each position's token, weighted by the policy's probabilities."""
    lp = finetune._token_logprobs(policy, ids, mask, spec.horizon)  # (B, H, V)
    with torch.no_grad():
        ref = finetune._token_logprobs(base, ids, mask, spec.horizon)
    if not expected:
        target = ids[:, -spec.horizon:, None]
        lp, ref = lp.gather(-1, target), ref.gather(-1, target)  # (B, H, 1): the sampled tokens
    r = ref - lp
    term = (torch.exp(r) - r - 1) * torch.exp(lp - lp.detach())  # k3 * ratio
    weight = lp.detach().exp() if expected else torch.ones_like(lp)
    return _grads(policy, (weight * term).sum(-1).mean())


def test_policy_term_matches_trl(batch):
    base, policy, tok, spec, ids, mask, adv = batch
    assert (mask == 1).all()  # one prompt, equal lengths: no padding, so positions agree
    toy = _toy_grad(base, policy, spec, ids, mask, adv, kl_coef=0.0)
    trl = _trl_grad(base, policy, tok, spec, ids, mask, adv, beta=0.0)
    assert toy.norm() > 1e-3  # a real gradient, not two zeros
    assert (toy - trl).norm() / toy.norm() < 1e-5


def test_kl_terms_differ_as_stated(batch):
    base, policy, tok, spec, ids, mask, adv = batch
    trl = _trl_grad(base, policy, tok, spec, ids, mask, adv, beta=BETA)
    pg = _toy_grad(base, policy, spec, ids, mask, adv, kl_coef=0.0)
    k3 = _k3_grad(base, policy, spec, ids, mask)
    # TRL's gradient is exactly the policy term plus beta times the sampled k3 term's gradient
    assert (trl - (pg + BETA * k3)).norm() / trl.norm() < 1e-5
    exact = (_toy_grad(base, policy, spec, ids, mask, adv, kl_coef=BETA) - pg) / BETA
    # the sampled estimate is not the exact gradient on one batch (toy-rl is far enough from toy-base) ...
    assert (exact - k3).norm() / exact.norm() > 0.05
    # ... but its expectation over each position's token is, to float precision
    expected = _k3_grad(base, policy, spec, ids, mask, expected=True)
    assert (exact - expected).norm() / exact.norm() < 1e-4
