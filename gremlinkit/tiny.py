"""Tiny random checkpoints of every family the site map covers, built offline from transformers'
own config classes: the self-check's support table and the architecture tests run on them.

Each gets a byte-level BPE tokenizer trained on a few sentences, which adds no BOS (as GPT-2's,
Pythia's and Llama 3's do).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import transformers as tf

N_LAYERS, D_MODEL, VOCAB = 3, 32, 300
TEXTS = ["The old sailor looked at the sea.", "A kind scholar wrote a long letter to her friend."]
EOT = "<|endoftext|>"


_SMALL = dict(vocab_size=VOCAB, num_hidden_layers=N_LAYERS, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=64, hidden_size=D_MODEL, pad_token_id=0, bos_token_id=0, eos_token_id=0)
_GQA = dict(_SMALL, num_key_value_heads=2)
CONFIGS: dict[str, Callable[[], Any]] = {
    "gpt2": lambda: tf.GPT2Config(vocab_size=VOCAB, n_layer=N_LAYERS, n_head=4, n_embd=D_MODEL, n_positions=64,
                                  pad_token_id=0, bos_token_id=0, eos_token_id=0),
    "gpt_neox": lambda: tf.GPTNeoXConfig(**_SMALL, use_parallel_residual=True),
    "gpt_neox_sequential": lambda: tf.GPTNeoXConfig(**_SMALL, use_parallel_residual=False),
    "llama": lambda: tf.LlamaConfig(**_GQA),
    "mistral": lambda: tf.MistralConfig(**_GQA),
    "qwen2": lambda: tf.Qwen2Config(**_GQA),
    "qwen3": lambda: tf.Qwen3Config(**_GQA, head_dim=8),
    "gemma2": lambda: tf.Gemma2Config(**_GQA, head_dim=8),
    "gemma3_text": lambda: tf.Gemma3TextConfig(**_GQA, head_dim=8),
    "phi3": lambda: tf.Phi3Config(**_GQA),
    "olmo": lambda: tf.OlmoConfig(**_GQA),
    "olmo2": lambda: tf.Olmo2Config(**_GQA),
    "stablelm": lambda: tf.StableLmConfig(**_GQA),
    "smollm3": lambda: tf.SmolLM3Config(**_GQA),
    "phi": lambda: tf.PhiConfig(**_SMALL),
    "gptj": lambda: tf.GPTJConfig(vocab_size=VOCAB, n_layer=N_LAYERS, n_head=4, n_embd=D_MODEL, n_positions=64,
                                  rotary_dim=4, pad_token_id=0, bos_token_id=0, eos_token_id=0),
    "qwen2_moe": lambda: tf.Qwen2MoeConfig(**_GQA, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                           shared_expert_intermediate_size=32),
    "mixtral": lambda: tf.MixtralConfig(**_GQA, num_local_experts=4, num_experts_per_tok=2),
}
FAMILIES = list(CONFIGS)


def config(family: str) -> Any:
    """The tiny transformers config of ``family`` (a name in `FAMILIES`)."""
    if family not in CONFIGS:
        raise ValueError(f"no tiny checkpoint for family {family!r}; there is one for {', '.join(FAMILIES)}")
    return CONFIGS[family]()


def tokenizer() -> Any:
    """A byte-level BPE tokenizer of fewer than `VOCAB` tokens whose BOS and EOS are ``<|endoftext|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(TEXTS * 20, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[EOT],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOT, eos_token=EOT)


def build(family: str, path: Path, seed: int = 0) -> Path:
    """Save a tiny random ``family`` checkpoint with its tokenizer under ``path``; returns ``path``."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = config(family)
    torch.manual_seed(seed)
    path = Path(path)
    AutoModelForCausalLM.from_config(cfg).eval().save_pretrained(path)
    tokenizer().save_pretrained(path)
    return path
