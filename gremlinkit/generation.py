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
    u = torch.rand(steps, vocab, generator=gen, device="cpu").clamp_(1e-20, 1 - 1e-7)
    return (-torch.log(-torch.log(u))).to(device)


class SeededGumbel:
    """Per-row Gumbel noise drawn one decoding step at a time: row ``r`` at step ``k`` equals
    ``gumbel_noise(seeds[r], steps, vocab)[k]`` (the CPU generator gives the same stream drawn row
    by row), without holding (rows, steps, vocab) in memory, which a real vocabulary makes GBs.
    Rows that share a seed share one draw. Steps must be asked for in order."""

    def __init__(self, seeds: list[int], vocab: int, device: torch.device | str = "cpu"):
        unique = list(dict.fromkeys(seeds))
        self.rows = torch.tensor([unique.index(s) for s in seeds], device=device)
        self.generators = [torch.Generator().manual_seed(s) for s in unique]
        self.vocab, self.device, self.step, self.noise = vocab, device, -1, None

    def at(self, step: int) -> torch.Tensor:
        """(rows, vocab) noise of decoding step ``step``."""
        if step != self.step:
            if step != self.step + 1:
                raise RuntimeError(f"Gumbel noise for step {step} was asked for after step {self.step}: "
                                   "steps must come in order")
            u = torch.stack([torch.rand(self.vocab, generator=g, device="cpu")  # the CPU generator's stream
                             for g in self.generators]).clamp_(1e-20, 1 - 1e-7)
            self.noise, self.step = (-torch.log(-torch.log(u))).to(self.device)[self.rows], step
        return self.noise


class GumbelMax(LogitsProcessor):
    """Turns HF greedy decoding into paired sampling: adds fixed Gumbel noise to tempered logits.

    ``noise`` is (rows, steps, vocab), (steps, vocab) shared by all rows, or a `SeededGumbel`.
    """

    def __init__(self, noise: torch.Tensor, prompt_width: int, temperature: float):
        self.noise, self.prompt_width, self.temperature = noise, prompt_width, temperature

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_width
        noise = self.noise.at(step) if isinstance(self.noise, SeededGumbel) else self.noise[..., step, :]  # (V,) or (B, V)
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
