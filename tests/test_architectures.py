"""The site map on tiny random models (`gremlinkit.tiny`) of six families, in depth, against
transformers' own outputs, in float32 and in bfloat16. Every family the map covers passes the
self-check (tests/test_check.py).
"""

import pytest
import torch
from transformers import AutoModelForCausalLM

import gremlinkit
from gremlinkit import interventions as iv
from gremlinkit import tiny

N_LAYERS, D = tiny.N_LAYERS, tiny.D_MODEL
# The families checked here in depth; every family the map covers passes the self-check (test_check.py).
CONFIGS = ["gpt2", "gpt_neox", "gpt_neox_sequential", "llama", "qwen2", "gemma2"]
PROMPTS = ["The old sailor looked at the sea.", "A kind scholar wrote."]


@pytest.fixture(scope="module", params=CONFIGS)
def small(request, tmp_path_factory):
    path = tiny.build(request.param, tmp_path_factory.mktemp(request.param))
    return request.param, gremlinkit.load(path, device="cpu")


def _hidden_states(subject, prompt):
    ids = subject.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(subject.model.config._name_or_path).eval()(
            ids, output_hidden_states=True).hidden_states


def test_sites_equal_output_hidden_states(small):
    family, subject = small
    for i, prompt in enumerate(PROMPTS):
        hs = _hidden_states(subject, prompt)
        n = hs[0].shape[1]
        names = [f"blocks.{L}.hook_resid_pre" for L in range(N_LAYERS)] + \
                [f"blocks.{L}.hook_resid_post" for L in range(N_LAYERS - 1)] + ["ln_final.hook_normalized"]
        acts = subject.activations_at(PROMPTS, names)  # a padded batch: row 1 is left-padded
        for L in range(N_LAYERS):
            torch.testing.assert_close(acts[f"blocks.{L}.hook_resid_pre"][i, :n], hs[L][0], atol=1e-5, rtol=0)
        for L in range(N_LAYERS - 1):
            torch.testing.assert_close(acts[f"blocks.{L}.hook_resid_post"][i, :n], hs[L + 1][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(acts["ln_final.hook_normalized"][i, :n], hs[N_LAYERS][0], atol=1e-5, rtol=0)


def test_block_sites_add_up(small):
    """resid_post = resid_pre + attn_out + mlp_out, through resid_mid where blocks are sequential."""
    family, subject = small
    L = 1
    if family == "gemma2":  # Gemma 2 norms both outputs before adding them: no simple identity
        pytest.skip("gemma2 applies post-attention and post-MLP norms")
    names = [n for n in subject.sites if n.startswith(f"blocks.{L}.")]
    a = subject.activations_at(PROMPTS, names)
    pre, attn, mlp, post = (a[f"blocks.{L}.hook_{h}"] for h in ("resid_pre", "attn_out", "mlp_out", "resid_post"))
    torch.testing.assert_close(post, pre + attn + mlp, atol=1e-5, rtol=0)
    if family == "gpt_neox":
        assert f"blocks.{L}.hook_resid_mid" not in subject.sites  # parallel attention and MLP
    else:
        torch.testing.assert_close(a[f"blocks.{L}.hook_resid_mid"], pre + attn, atol=1e-5, rtol=0)


def test_gpt2_embeddings_sum_to_resid_pre_0(small):
    family, subject = small
    if family != "gpt2":
        pytest.skip("only GPT-2 has learned position embeddings")
    a = subject.activations_at(PROMPTS, ["hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre"])
    # hook_pos_embed is per position of the padded batch; compare the unpadded first row.
    n = int((a["hook_embed"][0].abs().sum(-1) > 0).sum())
    torch.testing.assert_close(a["hook_embed"][0, :n] + a["hook_pos_embed"][0, :n],
                               a["blocks.0.hook_resid_pre"][0, :n], atol=1e-5, rtol=0)


def test_steering_moves_logits_and_a_zero_steer_does_not(small):
    _, subject = small
    base = subject.run(PROMPTS)
    v = torch.randn(D)
    site = "blocks.1.hook_resid_post"
    assert torch.equal(subject.run(PROMPTS, [iv.steer(v, 0.0, site)]), base)
    moved = subject.run(PROMPTS, [iv.steer(v, 4.0, site, pos=2)])
    delta = (moved - base).abs().amax(-1)  # (B, T)
    assert delta[:, :2].max() == 0 and delta[:, 2].min() > 0  # causal: nothing before position 2 moves


def test_bf16_agrees_with_fp32_and_a_zero_edit_is_exact(small):
    """Sites and a steering edit's effect in bfloat16 against float32: relative L2 error < 0.05."""
    family, subject = small
    half = gremlinkit.load(subject.model.config._name_or_path, device="cpu", dtype=torch.bfloat16)
    assert not half.prepends_bos and half.dtype == torch.bfloat16
    site = f"blocks.{N_LAYERS - 1}.hook_resid_post"
    ref, got = subject.activations(PROMPTS, site), half.activations(PROMPTS, site)
    assert got.dtype == torch.bfloat16
    assert float((got.float() - ref).norm() / ref.norm()) < 0.05
    v = torch.randn(D)
    edits = [iv.steer(v, 4.0, "blocks.1.hook_resid_post", pos=2)]
    d_ref = subject.run(PROMPTS, edits) - subject.run(PROMPTS)
    d_half = (half.run(PROMPTS, edits).float() - half.run(PROMPTS).float())
    assert float((d_half - d_ref).norm() / d_ref.norm()) < 0.05
    assert torch.equal(half.run(PROMPTS, [iv.steer(v, 0.0, "blocks.1.hook_resid_post")]), half.run(PROMPTS))
