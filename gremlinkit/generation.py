"""Paired sampling: Gumbel-max with noise fixed by (seed, step), so runs differ only by intervention.

Sampling ``argmax(logits / T + g)`` with ``g ~ Gumbel(0, 1)`` draws from ``softmax(logits / T)``.
If ``g`` depends only on the seed and the decoding step, a baseline run and an intervened run of
the same prompt see the same noise: wherever the intervention leaves the distribution unchanged,
they pick the same token, and every difference is caused by the intervention.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor


def gumbel_noise(seed: int, steps: int, vocab: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(steps, vocab) standard Gumbel noise on ``device``, a pure function of the seed.

    It is drawn by the CPU generator and then moved, so a seed gives the same noise on every device.
    """
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(steps, vocab, generator=gen).clamp_(1e-20, 1 - 1e-7)
    return (-torch.log(-torch.log(u))).to(device)


class GumbelMax(LogitsProcessor):
    """Turns HF greedy decoding into paired sampling: adds fixed Gumbel noise to tempered logits.

    ``noise`` is (rows, steps, vocab) or (steps, vocab) shared by all rows.
    """

    def __init__(self, noise: torch.Tensor, prompt_width: int, temperature: float):
        self.noise, self.prompt_width, self.temperature = noise, prompt_width, temperature

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_width
        noise = self.noise[..., step, :]  # (V,) or (B, V)
        if self.temperature == 0:
            return scores
        # Sampling happens in float32 whatever the model's dtype, so bf16 logits are not re-rounded.
        return scores.float() / self.temperature + noise[..., : scores.shape[-1]].to(scores.device)


@dataclass(frozen=True)
class Generation:
    """What `Subject.generate` returns."""

    tokens: torch.Tensor  # (B, new) generated ids
    text: list[str]  # decoded continuations
    prompt_lengths: torch.Tensor  # (B,)
    records: dict[str, torch.Tensor] = field(default_factory=dict)  # site -> (B, steps, d)
