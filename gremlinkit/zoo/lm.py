"""Train and evaluate the zoo's GPT-2-architecture language models, plus n-gram baselines."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from gremlinkit.zoo.corpus import Corpus


@dataclass(frozen=True)
class LMSpec:
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 256
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 600
    lr: float = 3e-3
    warmup: int = 40
    seed: int = 0


def encode_docs(corpus: Corpus, tok: PreTrainedTokenizerFast) -> list[np.ndarray]:
    """Each document as an id array, BOS first (the token stream *is* the tokenisation)."""
    return [np.asarray(tok.convert_tokens_to_ids(doc), dtype=np.int64) for doc in corpus.docs]


def _packed_batches(docs: list[np.ndarray], spec: LMSpec, gen: torch.Generator):
    """Endless (B, T) batches of the concatenated, shuffled document stream."""
    while True:
        order = torch.randperm(len(docs), generator=gen).tolist()
        stream = np.concatenate([docs[i] for i in order])
        n_rows = len(stream) // spec.seq_len
        rows = torch.from_numpy(stream[: n_rows * spec.seq_len]).view(n_rows, spec.seq_len)  # (N, T)
        for start in range(0, n_rows - spec.batch_size + 1, spec.batch_size):
            yield rows[start : start + spec.batch_size]


def new_model(tok: PreTrainedTokenizerFast, spec: LMSpec) -> GPT2LMHeadModel:
    cfg = GPT2Config(
        vocab_size=len(tok), n_positions=spec.n_positions, n_embd=spec.n_embd, n_layer=spec.n_layer,
        n_head=spec.n_head, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    torch.manual_seed(spec.seed)
    return GPT2LMHeadModel(cfg)


def optimizer_step(model: torch.nn.Module, opt, sched, loss: torch.Tensor) -> None:
    """One clipped AdamW step and a scheduler tick: the update every zoo trainer makes."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()


def train_lm(model: GPT2LMHeadModel, docs: list[np.ndarray], spec: LMSpec) -> list[float]:
    """Next-token training with AdamW and a warmup-cosine schedule; returns the loss per step."""
    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < spec.warmup:
            return (step + 1) / spec.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - spec.warmup) / max(1, spec.steps - spec.warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses = []
    batches = _packed_batches(docs, spec, gen)
    for _ in tqdm(range(spec.steps), desc="Training LM", mininterval=2):
        batch = next(batches)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer_step(model, opt, sched, loss)
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def heldout_loss(model: GPT2LMHeadModel, docs: list[np.ndarray], batch_size: int = 32) -> float:
    """Mean next-token cross-entropy (nats) over held-out documents, each read from its BOS."""
    total, count = 0.0, 0
    for start in range(0, len(docs), batch_size):
        chunk = docs[start : start + batch_size]
        width = max(len(d) for d in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)  # (B, T), right-padded
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for i, d in enumerate(chunk):
            ids[i, : len(d)] = torch.from_numpy(d)
            mask[i, : len(d)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (B, T-1, V)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        keep = mask[:, 1:].bool()
        total += nll[keep].sum().item()
        count += int(keep.sum())
    return total / count


def ngram_baselines(train: list[np.ndarray], test: list[np.ndarray], vocab_size: int) -> dict[str, float]:
    """Held-out cross-entropy (nats) of add-0.1-smoothed unigram and bigram models on the same targets."""
    alpha = 0.1
    uni = np.full(vocab_size, alpha)
    bi = np.full((vocab_size, vocab_size), alpha)
    for d in train:
        np.add.at(uni, d[1:], 1)
        np.add.at(bi, (d[:-1], d[1:]), 1)
    uni /= uni.sum()
    bi /= bi.sum(axis=1, keepdims=True)
    prev = np.concatenate([d[:-1] for d in test])
    nxt = np.concatenate([d[1:] for d in test])
    return {"unigram": float(-np.log(uni[nxt]).mean()), "bigram": float(-np.log(bi[prev, nxt]).mean())}
