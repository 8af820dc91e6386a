"""The BOS policy, on a GPT-2-architecture stand-in for the ``gpt2`` example of Getting started.

GPT-2's tokenizer adds no BOS, while pretrained GPT-2 SAEs (``gpt2-small-res-jb``) were trained
with ``prepend_bos=True``. The stand-in is a tiny random GPT-2 with a byte-level BPE tokenizer built
the same way (``<|endoftext|>`` as BOS and EOS, no post-processor), and a sae_lens SAE whose
metadata sets ``prepend_bos``. It is loaded through `gremlinkit.load` exactly as Getting started's
example is; only the SAE comes from a local directory instead of the hub (the ``gpt2_like``
fixture in ``conftest.py``).
"""

import warnings

import pytest
import torch
from transformers import PreTrainedTokenizerFast

import gremlinkit
from gremlinkit.errors import InputError
from gremlinkit.prompts import words_to_ids

from conftest import TEXTS


def test_the_tokenizer_really_adds_no_bos(gpt2_like):
    tok = PreTrainedTokenizerFast.from_pretrained(gpt2_like[0])
    assert tok(TEXTS[0])["input_ids"][0] != tok.bos_token_id


def test_an_sae_trained_with_a_bos_is_honoured_and_the_conflict_named(gpt2_like):
    model_dir, sae_dir = gpt2_like
    with pytest.warns(UserWarning, match=r"does not prepend a BOS.*prepend_bos=True.*following the SAE"):
        subject = gremlinkit.load(model_dir, sae=str(sae_dir), device="cpu")
    assert subject.prepends_bos
    tok = subject.tokenizer
    batch = subject.batch(TEXTS)
    for i, text in enumerate(TEXTS):
        ids = batch.to_prompt_index(batch.input_ids)[i, : batch.sizes[i]].tolist()
        assert ids == [tok.bos_token_id] + tok(text)["input_ids"]  # every real token kept, BOS first
    assert subject.check_sae(TEXTS)["tokens"] == sum(len(tok(t)["input_ids"]) for t in TEXTS)


def test_without_a_bos_position_zero_is_the_first_real_token_and_nothing_is_dropped(gpt2_like):
    model_dir, sae_dir = gpt2_like
    with pytest.warns(UserWarning, match=r"bos=False disagrees with the SAE's metadata prepend_bos=True"):
        subject = gremlinkit.load(model_dir, sae=str(sae_dir), device="cpu", bos=False)
    assert not subject.prepends_bos
    ids = subject.tokenizer(TEXTS[1], return_tensors="pt").input_ids
    with torch.no_grad():
        hs = subject.model._module(ids, output_hidden_states=True).hidden_states
    ours = subject.activations(TEXTS, "blocks.1.hook_resid_pre")[1, : ids.shape[1]]
    torch.testing.assert_close(ours, hs[1][0], atol=1e-5, rtol=0)  # position 0 is the first real token
    n_tokens = sum(len(subject.tokenizer(t)["input_ids"]) for t in TEXTS)
    assert subject.check_sae(TEXTS)["tokens"] == n_tokens  # check_sae drops no real token
    assert int(subject.batch(TEXTS).prompt_mask(skip_bos=True).sum()) == n_tokens


def test_a_model_without_an_sae_follows_its_tokenizer_silently(gpt2_like):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        subject = gremlinkit.load(gpt2_like[0], device="cpu")
    assert not subject.prepends_bos


def test_zoo_models_keep_their_bos(toy):
    assert toy.prepends_bos and toy.batch(["ada says :"]).input_ids[0, 0] == toy.tokenizer.bos_token_id


def test_words_become_ids_through_the_tokenizer_or_a_named_error(gpt2_like, toy):
    subject_tok = PreTrainedTokenizerFast.from_pretrained(gpt2_like[0])
    with pytest.raises(InputError, match="'scholarly' is .* tokens for this tokenizer, not one"):
        words_to_ids(subject_tok, ["scholarly"])
    assert words_to_ids(toy.tokenizer, ["ahoy", "matey"]) == toy.tokenizer("ahoy matey",
                                                                         add_special_tokens=False)["input_ids"]


def test_bos_true_needs_a_bos_token(gpt2_like, tmp_path):
    tok = PreTrainedTokenizerFast.from_pretrained(gpt2_like[0])
    tok.bos_token = None
    from gremlinkit.prompts import resolve_bos

    with pytest.raises(InputError, match=r"^bos=True, but this tokenizer has no BOS token \(bos_token_id is None\): use bos=False$"):
        resolve_bos(tok, True)
