"""SAELens metadata honoured on a local SAE directory: ``normalize_activations`` (reads and edits in
the SAE's own normalisation), ``hf_hook_name`` (an SAE that names a module, not a hook) and
``exclude_special_tokens`` (left out of feature statistics). Each against an independent computation
(transformers' hidden states, sae_lens's own forward pass with its error term) and a negative control
where the wrong field changes the result."""

import numpy as np
import pytest
import torch
from sae_lens import SAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformers import AutoModelForCausalLM

import gremlinkit
from gremlinkit import interventions as iv
from gremlinkit.errors import SiteError
from gremlinkit.tiny import EOT

TEXTS = ["The old sailor looked at the sea.", "A kind scholar wrote a long letter to her friend."]
SITE = "blocks.1.hook_resid_pre"


def _sae(path, normalize="none", seed=0, **meta):
    """A random SAE written to ``path`` in SAELens's format, with ``meta`` as its metadata."""
    torch.manual_seed(seed)
    meta = {"hook_name": SITE, "prepend_bos": True, **meta}
    sae = SAE.from_dict(StandardSAEConfig(d_in=32, d_sae=64, normalize_activations=normalize,
                                          metadata=SAEMetadata(**meta)).to_dict())
    with torch.no_grad():  # a positive encoder bias: many features fire, so ablations bite
        sae.b_enc.fill_(0.5)
    sae.save_model(path)
    return path


@pytest.mark.parametrize("normalize", ["constant_norm_rescale", "layer_norm"])
def test_edits_happen_in_the_saes_own_normalisation(gpt2_like, tmp_path, normalize):
    model, _ = gpt2_like
    subject = gremlinkit.load(model, sae=_sae(tmp_path / "sae", normalize), device="cpu")
    other = gremlinkit.load(model, sae=_sae(tmp_path / "plain", "none"), device="cpu")  # the same weights
    assert subject.sae.cfg.normalize_activations == normalize
    with torch.no_grad():
        logits = subject.run(TEXTS)
        assert torch.equal(subject.run(TEXTS, [iv.add(3, 0.0)]), logits)  # an edit of zero is the identity
        x = subject.activations(TEXTS, SITE)  # (B, T, d), prompt indexing
        f = subject.sae.encode(x[0, 2])
        feature = int(f.argmax())
        assert f[feature] > 0
        edited = subject.activations(TEXTS, SITE, [iv.ablate(feature, pos=2, rows=0)])
        # sae_lens's own forward: the feature zeroed at its post-activation hook, its error term kept
        subject.sae.use_error_term = True
        hook = subject.sae.hook_sae_acts_post.register_forward_hook(
            lambda _m, _i, out: out.index_fill(-1, torch.tensor([feature]), 0.0))
        try:
            expected = subject.sae(x[0, 2:3])[0]
        finally:
            hook.remove()
            subject.sae.use_error_term = False
        torch.testing.assert_close(edited[0, 2], expected, atol=1e-5, rtol=1e-5)
        assert torch.equal(edited[1], x[1]) and torch.equal(edited[0, :2], x[0, :2])  # only where it was asked
        wrong = other.activations(TEXTS, SITE, [iv.ablate(feature, pos=2, rows=0)])  # the field ignored
        assert (wrong[0, 2] - expected).norm() > 0.1 * (expected - x[0, 2]).norm()


def test_an_sae_that_names_a_module_reads_that_modules_output(gpt2_like, tmp_path):
    model, _ = gpt2_like
    post = gremlinkit.load(model, sae=_sae(tmp_path / "a", hook_name=None, hf_hook_name="transformer.h.0"),
                           device="cpu")
    assert post.sae_site == "blocks.0.hook_resid_post"
    hf = AutoModelForCausalLM.from_pretrained(model).eval()
    ids = post.batch(TEXTS[:1]).input_ids
    with torch.no_grad():
        hidden = hf(ids, output_hidden_states=True).hidden_states[1][0]  # what block 0 writes
        torch.testing.assert_close(post.features(TEXTS[:1])[0], post.sae.encode(hidden), atol=1e-5, rtol=1e-5)
    pre = gremlinkit.load(model, sae=_sae(tmp_path / "b", hook_name="hook_z_unknown", hf_hook_name="transformer.h.1.input"),
                          device="cpu")
    assert pre.sae_site == "blocks.1.hook_resid_pre"  # an unknown hook name gives way to the module
    with pytest.raises(SiteError, match=r"contradicts itself: hook_name='blocks.0.hook_resid_pre', but "
                                        r"hf_hook_name='transformer.h.1' is site 'blocks.1.hook_resid_post'"):
        gremlinkit.load(model, sae=_sae(tmp_path / "c", hook_name="blocks.0.hook_resid_pre",
                                        hf_hook_name="transformer.h.1"), device="cpu")
    with pytest.raises(SiteError, match=r"module 'transformer.h.9' is no site of this gpt2 model"):
        gremlinkit.load(model, sae=_sae(tmp_path / "d", hook_name=None, hf_hook_name="transformer.h.9"), device="cpu")


def test_special_tokens_are_left_out_of_feature_statistics_where_the_sae_says_so(gpt2_like, tmp_path):
    model, _ = gpt2_like
    texts = [f"{TEXTS[0]}{EOT}{TEXTS[1]}", TEXTS[1]]
    excluding = gremlinkit.load(model, sae=_sae(tmp_path / "x", exclude_special_tokens=True), device="cpu")
    counting = gremlinkit.load(model, sae=_sae(tmp_path / "y", exclude_special_tokens=False), device="cpu")
    eot = excluding.tokenizer.convert_tokens_to_ids(EOT)
    assert excluding.excluded_ids == [eot] and counting.excluded_ids == []
    batch = excluding.batch(texts)
    ids = batch.to_prompt_index(batch.input_ids)
    every = batch.prompt_mask(skip_bos=True)
    inner = int((ids[every] == eot).sum())
    assert inner == 1  # the EOT between the two sentences (the BOS is left out in both)
    assert torch.equal(excluding.counted(texts), every & (ids != eot))
    assert torch.equal(counting.counted(texts), every)  # the negative control
    assert excluding.check_sae(texts)["tokens"] == counting.check_sae(texts)["tokens"] - inner
    listed = gremlinkit.load(model, sae=_sae(tmp_path / "z", exclude_special_tokens=[int(ids[0, 3])]), device="cpu")
    assert listed.excluded_ids == [int(ids[0, 3])]
    assert not listed.counted(texts)[0, 3] and int(listed.counted(texts).sum()) == int(
        (every & (ids != ids[0, 3])).sum())
    np.testing.assert_array_equal(excluding.counted(texts).sum(1).numpy(), every.sum(1).numpy() - [1, 0])
