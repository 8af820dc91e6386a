"""Turning prompts (strings or token ids) into one left-padded batch, and back to prompt indexing.

Positions are each prompt's own token indices: position 0 is the first token the model reads. With
a BOS policy of ``bos=True`` that is the BOS token; with ``bos=False`` it is the prompt's first real
token. `Batch.bos` says which, so code that wants real tokens only (`Batch.prompt_mask`) never
drops one when there is no BOS.
"""

from __future__ import annotations

import warnings
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
    bos: bool = False  # every row starts with a BOS token at position 0
    sizes: tuple[int, ...] = ()  # the lengths as Python ints: shapes never wait on the device

    def __post_init__(self) -> None:
        if not self.sizes:
            object.__setattr__(self, "sizes", tuple(int(n) for n in self.lengths.tolist()))

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    @property
    def offsets(self) -> torch.Tensor:
        return self.input_ids.shape[1] - self.lengths

    def inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def split(self, size: int) -> list["Batch"]:
        """Chunks of at most ``size`` rows, each trimmed to its own widest prompt."""
        parts = []
        for start in range(0, len(self.sizes), size):
            sizes = self.sizes[start:start + size]
            width = max(sizes)
            rows = slice(start, start + size)
            parts.append(Batch(self.input_ids[rows, -width:], self.attention_mask[rows, -width:], self.lengths[rows],
                               self.bos, sizes))
        return parts

    def positions(self) -> torch.Tensor:
        """(B, T) each column's position in its prompt's own indexing; -1 on padding."""
        cols = torch.arange(self.input_ids.shape[1], device=self.device)[None] - self.offsets[:, None]
        return torch.where(cols >= 0, cols, torch.full_like(cols, -1))

    def prompt_mask(self, skip_bos: bool = False) -> torch.Tensor:
        """(B, T) True where a prompt-indexed tensor holds a token; with ``skip_bos``, not the BOS.

        ``skip_bos`` drops position 0 only when the batch has a BOS there: a real token is never dropped.
        """
        cols = torch.arange(self.input_ids.shape[1], device=self.device)[None]
        return (cols < self.lengths[:, None]) & (cols >= int(skip_bos and self.bos))

    def from_prompt_index(self, x: torch.Tensor, into: torch.Tensor) -> torch.Tensor:
        """The inverse of `to_prompt_index`: ``x``'s rows placed into a copy of ``into`` (differentiable)."""
        out = into.clone()
        width = self.input_ids.shape[1]
        for i, n in enumerate(self.sizes):
            out[i, width - n:] = x[i, :n]
        return out

    def to_prompt_index(self, x: torch.Tensor) -> torch.Tensor:
        """Shift each row of a (B, T, ...) tensor so that column p is the prompt's own token p.

        Columns past a prompt's length are zero.
        """
        out = torch.zeros_like(x)
        width = self.input_ids.shape[1]
        for i, n in enumerate(self.sizes):
            out[i, :n] = x[i, width - n:width]
        return out


def encode(text: str, tokenizer, bos: bool) -> list[int]:
    """Token ids of ``text``: the tokenizer's own ids, with its BOS first when ``bos``.

    The tokenizer adds no special tokens of its own here; whether a BOS leads is the caller's
    policy (`Subject.prepends_bos`), decided once.
    """
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ([tokenizer.bos_token_id] if bos else []) + ids


def host_ids(ids: Sequence[int]) -> torch.Tensor:
    """One prompt's token ids as a tensor on the host, on purpose: prompts are inputs, and
    `make_batch` places the padded batch on the subject's device once."""
    return torch.tensor(list(ids), dtype=torch.long, device="cpu")


def make_batch(prompts: Prompts, tokenizer, max_length: int | None = None, *, bos: bool = False,
               device: torch.device | str = "cpu") -> Batch:
    """Tokenise strings (with a leading BOS when ``bos``) or left-pad token ids, on ``device``.

    Token ids are used as given; the batch counts as having a BOS when ``bos`` and every row
    starts with the tokenizer's BOS id.
    """
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
        ids = [encode(r, tokenizer, bos) for r in rows]
        has_bos = bos
    elif any(isinstance(r, str) for r in rows):
        raise InputError("prompts mix strings and token ids: pass one kind")
    else:
        ids = [torch.as_tensor(r, dtype=torch.long).tolist() for r in rows]
        has_bos = bos and all(len(r) > 0 and r[0] == tokenizer.bos_token_id for r in ids)
    sizes = [len(r) for r in ids]  # checked in Python: the tensors are never read back
    if min(sizes) == 0:
        raise InputError(f"prompt {sizes.index(0)} is empty: every prompt needs at least one token")
    width = max(sizes)
    if max_length is not None and width > max_length:
        raise InputError(f"prompt {sizes.index(width)} has {width} tokens; this model reads at most {max_length}")
    lengths = torch.tensor(sizes, device=device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # Padded on the left in Python, then made on the device in one call each.
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in ids], dtype=torch.long, device=device)  # (B, T)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids], dtype=torch.long, device=device)
    return Batch(input_ids, mask, lengths, has_bos, tuple(sizes))


def tokenizer_prepends_bos(tokenizer) -> bool:
    """Whether ``tokenizer`` puts its BOS token first when it encodes a text by itself."""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token_id is not None and len(ids) > 0 and ids[0] == tokenizer.bos_token_id


def resolve_bos(tokenizer, bos: bool | None, sae_prepend_bos: bool | None = None) -> bool:
    """The one BOS policy: whether every string prompt starts with the tokenizer's BOS token.

    ``bos=None`` follows the SAE's ``prepend_bos`` metadata when there is an SAE that states one
    (its features were trained on that), else what the tokenizer does by itself. A conflict
    between the choice and the SAE's metadata, or between the SAE and the tokenizer, is warned
    about by name.
    """
    default = tokenizer_prepends_bos(tokenizer)
    if bos is None:
        choice = default if sae_prepend_bos is None else bool(sae_prepend_bos)
        if sae_prepend_bos is not None and choice != default:
            warnings.warn(f"the tokenizer {'prepends' if default else 'does not prepend'} a BOS token, but the SAE "
                          f"was trained with prepend_bos={bool(sae_prepend_bos)}: following the SAE "
                          f"(prepends_bos={choice}); pass bos=True or bos=False to choose", stacklevel=3)
    else:
        choice = bool(bos)
        if sae_prepend_bos is not None and choice != bool(sae_prepend_bos):
            warnings.warn(f"bos={choice} disagrees with the SAE's metadata prepend_bos={bool(sae_prepend_bos)}: "
                          "its features were trained on prompts "
                          f"{'with' if sae_prepend_bos else 'without'} a leading BOS", stacklevel=3)
    if choice and tokenizer.bos_token_id is None:
        raise InputError("bos=True, but this tokenizer has no BOS token (bos_token_id is None): use bos=False")
    return choice


def words_to_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """One token id per word, through the tokenizer; a word that is not exactly one token is an error.

    For word-level vocabularies (the zoo's persona world) this is the token stream itself; on a BPE
    tokenizer it refuses, naming the word, instead of silently mis-encoding it.
    """
    out = []
    for w in words:
        ids = tokenizer(w, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise InputError(f"word {w!r} is {len(ids)} tokens for this tokenizer, not one: word positions "
                             "need a word-level vocabulary such as the zoo's")
        out.append(ids[0])
    return out
