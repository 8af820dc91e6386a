"""Turning prompts (strings or token ids) into one left-padded batch, and back to prompt indexing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch

from gremlinkit.errors import InputError

Prompts = Union[str, Sequence[str], torch.Tensor, Sequence[Sequence[int]], Sequence[torch.Tensor]]


@dataclass(frozen=True)
class Batch:
    """A left-padded batch. Row ``i``'s token ``p`` sits at column ``offsets[i] + p``."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    lengths: torch.Tensor  # (B,)

    @property
    def offsets(self) -> torch.Tensor:
        return self.input_ids.shape[1] - self.lengths

    def inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def split(self, size: int) -> list["Batch"]:
        """Chunks of at most ``size`` rows, each trimmed to its own widest prompt."""
        parts = []
        for start in range(0, len(self.lengths), size):
            lengths = self.lengths[start:start + size]
            width = int(lengths.max())
            rows = slice(start, start + size)
            parts.append(Batch(self.input_ids[rows, -width:], self.attention_mask[rows, -width:], lengths))
        return parts

    def positions(self) -> torch.Tensor:
        """(B, T) each column's position in its prompt's own indexing; -1 on padding."""
        cols = torch.arange(self.input_ids.shape[1])[None] - self.offsets[:, None]
        return torch.where(cols >= 0, cols, torch.full_like(cols, -1))

    def prompt_mask(self, skip_bos: bool = False) -> torch.Tensor:
        """(B, T) True where a prompt-indexed tensor holds a real token (optionally not BOS)."""
        cols = torch.arange(self.input_ids.shape[1])[None]
        return (cols < self.lengths[:, None]) & (cols >= int(skip_bos))

    def from_prompt_index(self, x: torch.Tensor, into: torch.Tensor) -> torch.Tensor:
        """The inverse of `to_prompt_index`: ``x``'s rows placed into a copy of ``into`` (differentiable)."""
        out = into.clone()
        for i, (off, n) in enumerate(zip(self.offsets.tolist(), self.lengths.tolist())):
            out[i, off:off + n] = x[i, :n]
        return out

    def to_prompt_index(self, x: torch.Tensor) -> torch.Tensor:
        """Shift each row of a (B, T, ...) tensor so that column p is the prompt's own token p.

        Columns past a prompt's length are zero.
        """
        out = torch.zeros_like(x)
        for i, (off, n) in enumerate(zip(self.offsets.tolist(), self.lengths.tolist())):
            out[i, :n] = x[i, off:off + n]
        return out


def make_batch(prompts: Prompts, tokenizer, max_length: int | None = None) -> Batch:
    """Tokenise strings (BOS is prepended by the tokenizer) or left-pad given token ids."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, torch.Tensor):
        if prompts.ndim == 1:
            prompts = prompts[None]
        rows = [r for r in prompts]
    else:
        rows = list(prompts)
    if len(rows) == 0:
        raise InputError("the prompt list is empty: pass at least one prompt")
    if all(isinstance(r, str) for r in rows):
        ids = [tokenizer(r, add_special_tokens=True)["input_ids"] for r in rows]
    elif any(isinstance(r, str) for r in rows):
        raise InputError("prompts mix strings and token ids: pass one kind")
    else:
        ids = [torch.as_tensor(r, dtype=torch.long).tolist() for r in rows]
    lengths = torch.tensor([len(r) for r in ids])
    if int(lengths.min()) == 0:
        raise InputError(f"prompt {int(lengths.argmin())} is empty: every prompt needs at least one token")
    if max_length is not None and int(lengths.max()) > max_length:
        raise InputError(f"prompt {int(lengths.argmax())} has {int(lengths.max())} tokens; "
                         f"this model reads at most {max_length}")
    width = int(lengths.max())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, r in enumerate(ids):
        input_ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return Batch(input_ids, mask, lengths)
