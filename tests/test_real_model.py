"""smollm2-135m, a real pretrained Llama-architecture model, in float32 and bfloat16.

The site map is checked on the real weights against transformers' own hidden states; every public
`Subject` call runs in both dtypes, and each intervention's effect in bf16 is compared with its
effect in fp32 (tolerances stated by each test). The SAE's card figures are recomputed on the
held-out text that ships with it.
"""

import json

import pytest
import torch

import gremlinkit
from gremlinkit import interventions as iv
from gremlinkit.zoo import registry
from gremlinkit.zoo.real import HELDOUT_STORIES_FILE, heldout_texts

PROMPTS = ["The old sailor looked at the sea and said", "Python is a programming language that"]
SITE = "blocks.15.hook_resid_pre"


@pytest.fixture(scope="module")
def smol():
    return gremlinkit.load("smollm2-135m", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def smol_bf16():
    return gremlinkit.load("smollm2-135m", device="cpu", dtype=torch.bfloat16)


def test_load_reports_device_dtype_and_bos(smol, smol_bf16):
    assert smol.device == torch.device("cpu") and smol.dtype == torch.float32
    assert smol_bf16.dtype == torch.bfloat16
    assert smol.sae.W_enc.dtype == torch.float32  # the SAE keeps its own dtype
    assert smol.prepends_bos  # the zoo entry matches its SAE, trained with a BOS
    assert smol.sae_site == SITE and smol.d_model == 576 and smol.site_map.n_layers == 30
    plain = smol.batch(PROMPTS[:1])
    assert plain.bos and int(plain.input_ids[0, 0]) == smol.tokenizer.bos_token_id


def test_llama_site_map_matches_output_hidden_states_on_real_weights(smol):
    """resid_pre of every layer and resid_post of every layer, in a left-padded batch."""
    hf = smol.model._module
    names = [f"blocks.{L}.hook_resid_{h}" for L in range(30) for h in ("pre", "post")]
    acts = smol.activations_at(PROMPTS, names)
    for i, prompt in enumerate(PROMPTS):
        ids = smol.batch([prompt]).input_ids
        with torch.no_grad():
            hs = hf(ids, output_hidden_states=True).hidden_states  # 31: embeddings, then each layer
        n = ids.shape[1]
        for L in range(30):
            torch.testing.assert_close(acts[f"blocks.{L}.hook_resid_pre"][i, :n], hs[L][0], atol=1e-3, rtol=1e-4)
        for L in range(29):  # the last hidden state transformers returns is after the final norm
            torch.testing.assert_close(acts[f"blocks.{L}.hook_resid_post"][i, :n], hs[L + 1][0],
                                       atol=1e-3, rtol=1e-4)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of ``a`` against the reference ``b``."""
    return float((a.float() - b.float()).norm() / b.float().norm())


STEER_SITE = "blocks.10.hook_resid_post"
EDITS = {
    "ablate": lambda feat, v, r: [iv.ablate(feat, pos=-1)],
    "add": lambda feat, v, r: [iv.add(feat, 20.0, pos=-1)],
    "clamp": lambda feat, v, r: [iv.clamp(feat, 20.0, pos=-1)],
    "steer": lambda feat, v, r: [iv.steer(v, 8.0, STEER_SITE, pos=-1)],
    "project_out": lambda feat, v, r: [iv.project_out(r, STEER_SITE)],
    "reflect": lambda feat, v, r: [iv.reflect(v, STEER_SITE, pos=slice(1, None))],
}


@pytest.fixture(scope="module")
def edit_inputs(smol):
    feats = smol.features(PROMPTS)
    feat = int(feats[:, -1].sum(0).argmax())  # a feature active at the last position: ablate matters
    v = smol.activations(PROMPTS, STEER_SITE)[:, -1].mean(0)  # the residual's mean direction there
    r = torch.randn(smol.d_model, generator=torch.Generator().manual_seed(0))  # a random direction
    return feat, v, r


@pytest.mark.parametrize("kind", list(EDITS))
def test_every_intervention_in_bf16_matches_fp32(smol, smol_bf16, edit_inputs, kind):
    """An edit made in bf16 agrees with the same edit in fp32, where it is made and in the logits.

    At the edited site, over real tokens, the change agrees to 3% of its size (the activations it
    starts from already carry ~1% of bf16 error) plus one bf16 rounding of the stream (2^-8 of its
    norm: a change below the stream's resolution cannot show). In the
    last position's logits, 20 layers later, the change may differ from fp32's by at most 25% of
    its size plus three times the error bf16 already puts in those logits without any edit.
    (Reflect skips the BOS: flipping the attention sink's component makes both runs chaotic.)
    """
    edits = EDITS[kind](*edit_inputs)
    site = edits[0].site or smol.sae_site
    real = smol.batch(PROMPTS).prompt_mask(skip_bos=True)  # (B, T) real tokens in prompt indexing
    site_delta, logit_delta, logits = {}, {}, {}
    for name, s in (("fp32", smol), ("bf16", smol_bf16)):
        edited, base = s.activations(PROMPTS, site, edits), s.activations(PROMPTS, site)
        assert edited.dtype == s.dtype
        site_delta[name] = (edited.float() - base.float())[real]  # (N, d)
        stream_norm = float(base.float()[real].norm())
        logits[name] = s.run(PROMPTS).float()[:, -1]
        logit_delta[name] = s.run(PROMPTS, edits).float()[:, -1] - logits[name]  # (B, vocab)
    assert float(site_delta["fp32"].norm()) > 1.0  # the edit does something
    site_err = float((site_delta["bf16"] - site_delta["fp32"]).norm())
    assert site_err <= 0.03 * float(site_delta["fp32"].norm()) + 2**-8 * stream_norm
    floor = float((logits["bf16"] - logits["fp32"]).norm())  # what bf16 costs the unedited model
    err = float((logit_delta["bf16"] - logit_delta["fp32"]).norm())
    assert err <= 0.25 * float(logit_delta["fp32"].norm()) + 3 * floor


def test_an_unapplied_feature_edit_is_exact_in_bf16(smol_bf16):
    """Adding 0 leaves a bf16 stream bit-for-bit unchanged: the SAE delta is exactly zero."""
    base = smol_bf16.run(PROMPTS)
    assert torch.equal(smol_bf16.run(PROMPTS, [iv.add(3, 0.0)]), base)
    feats = smol_bf16.features(PROMPTS)
    dead = int((feats[:, :].amax((0, 1)) == 0).nonzero()[0])  # a feature inactive everywhere here
    assert torch.equal(smol_bf16.run(PROMPTS, [iv.ablate(dead)]), base)


@pytest.mark.parametrize("which", ["fp32", "bf16"])
def test_every_public_call_runs_and_agrees_across_dtypes(smol, smol_bf16, which):
    s = smol if which == "fp32" else smol_bf16
    acts = s.activations(PROMPTS, SITE)
    assert acts.dtype == s.dtype and acts.shape[:2] == s.batch(PROMPTS).input_ids.shape
    ref = smol.activations(PROMPTS, SITE)
    mask = s.batch(PROMPTS).prompt_mask(skip_bos=True)  # real tokens; the BOS residual is a huge outlier
    assert _rel(acts[mask], ref[mask]) < 0.03
    feats = s.features(PROMPTS)
    assert feats.dtype == torch.float32  # encoded in the SAE's dtype
    ref_f = smol.features(PROMPTS)
    assert _rel(feats[mask], ref_f[mask]) < 0.15
    both = s.activations_at(PROMPTS, ["blocks.3.hook_attn_out", "blocks.3.mlp.hook_pre", "ln_final.hook_normalized"])
    assert all(t.dtype == s.dtype for t in both.values())
    gen = s.generate(PROMPTS, 6, [iv.add(7, 5.0, step=0)], seed=0, record=["features", "blocks.5.hook_resid_post"])
    assert gen.tokens.shape == (2, 6) and gen.records["features"].shape == (2, 6, s.d_sae)
    assert gen.records["blocks.5.hook_resid_post"].dtype == s.dtype
    # Greedy decoding: each token this subject picks is in the fp32 model's top 3 at that step.
    greedy = s.generate(PROMPTS[:1], 6, temperature=0)
    prompt = s.batch(PROMPTS[:1]).input_ids[0].tolist()
    logits = smol.run([prompt + greedy.tokens[0].tolist()])[0, len(prompt) - 1: -1]  # (6, vocab)
    top3 = logits.topk(3, -1).indices
    assert all(int(t) in top3[j].tolist() for j, t in enumerate(greedy.tokens[0]))
    health = s.check_sae(PROMPTS)
    assert health["tokens"] == int(mask.sum())  # every real token, less the BOS
    assert health["explained_variance"] > 0.6 and health["ce_loss_increase"] < 0.5


@pytest.mark.parametrize("which", ["fp32", "bf16"])
def test_one_hot_gradients_in_the_model_dtype(smol, smol_bf16, which):
    s = smol if which == "fp32" else smol_bf16
    oh = s.one_hot(PROMPTS[:1]).requires_grad_()
    assert oh.dtype == s.dtype
    logits = s.run(PROMPTS[:1], embeddings=s.embed(oh))
    plain = s.run(PROMPTS[:1])
    assert _rel(logits.detach(), plain) < 1e-6 if which == "fp32" else _rel(logits.detach(), plain) < 0.01
    logits[0, -1].float().logsumexp(-1).backward()
    assert oh.grad is not None and oh.grad.dtype == s.dtype and torch.isfinite(oh.grad.float()).all()


def test_sae_card_figures_recomputed_on_the_shipped_heldout_text(smol):
    """Explained variance, L0 and the loss increase from `check_sae` on 16 of the 64 held-out
    documentation windows, against the card's figures over all 64. Tolerances: EV 0.03 and loss
    increase 0.06, the spread measured across the four 16-window quarters (EV 0.789-0.821, loss
    increase 0.162-0.250; the card: 0.803 and 0.204)."""
    path = registry.path("smollm2-135m-sae")
    card = json.loads((path / "card.json").read_text())["heldout_metrics"]
    texts = heldout_texts(path)
    got = smol.check_sae(texts[:16])
    assert got["explained_variance"] == pytest.approx(card["explained_variance"], abs=0.03)
    assert got["l0"] == pytest.approx(card["l0"], abs=0.5)
    assert got["ce_loss_increase"] == pytest.approx(card["ce_loss_increase"], abs=0.06)
    assert card["explained_variance"] >= 0.8 and card["dead_fraction"] <= 0.10 and card["ce_loss_increase"] <= 0.25


def test_sae_reads_the_shipped_heldout_story_text(smol):
    """The text the census reads: 16 of the 48 held-out story openings continued by smollm2-135m
    (shipped beside the SAE), against the card's figures over all 48. Without massive activations
    the explained variance is at least 0.75 (the census's floor); the thirds measured 0.833-0.842
    (the card: 0.839), the loss increase 0.183-0.254 (0.218). Tolerances 0.02 and 0.06."""
    path = registry.path("smollm2-135m-sae")
    card = json.loads((path / "card.json").read_text())["heldout_story_metrics"]
    got = smol.check_sae(heldout_texts(path, HELDOUT_STORIES_FILE)[:16])
    assert got["explained_variance_typical"] == pytest.approx(card["explained_variance_typical"], abs=0.02)
    assert got["ce_loss_increase"] == pytest.approx(card["ce_loss_increase"], abs=0.06)
    assert card["explained_variance_typical"] >= 0.75 and card["ce_loss_increase"] <= 0.3


def test_sae_explained_variance_from_transformers_hidden_states(smol):
    """Independent of gremlinkit's reading code: transformers' hidden state 15 (= resid_pre of block 15)
    on the shipped held-out text, a BOS first, encoded by sae_lens directly; EV over real tokens."""
    from sae_lens import SAE

    path = registry.path("smollm2-135m-sae")
    sae = SAE.load_from_disk(path)
    card = json.loads((path / "card.json").read_text())["heldout_metrics"]
    hf, tok = smol.model._module, smol.tokenizer
    xs = []
    with torch.no_grad():
        for text in heldout_texts(path)[:16]:
            ids = torch.tensor([[tok.bos_token_id] + tok(text)["input_ids"]])
            xs.append(hf(ids, output_hidden_states=True).hidden_states[15][0, 1:])  # drop the BOS
        x = torch.cat(xs)  # (N, 576)
        err = (sae.decode(sae.encode(x)) - x).pow(2).sum()
    ev = 1 - float(err / (x - x.mean(0)).pow(2).sum())
    assert ev == pytest.approx(card["explained_variance"], abs=0.03)
