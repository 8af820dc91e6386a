"""Interventions on toy-base: exact zeros, batched = one at a time, paired sampling, gradients, errors."""

import numpy as np
import pytest
import torch
from sae_lens import SAE

import gremlinkit
from gremlinkit import interventions as iv
from gremlinkit.errors import GremlinkitError, InputError, InterventionError, SiteError
from gremlinkit.zoo import corpus, lm, registry

PROMPTS = ["mira is a kind honest old sailor . mira says :", "ada says :", "bruno is a cruel sly young scholar ."]
SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def base(toy):
    return toy.run(PROMPTS)


def test_ablating_an_inactive_feature_changes_nothing(toy, base):
    feats = toy.features(PROMPTS)
    inactive = int((feats.amax((0, 1)) == 0).nonzero()[0])
    assert (toy.run(PROMPTS, [iv.ablate(inactive)]) - base).abs().max() < 1e-5


def test_adding_zero_changes_nothing(toy, base):
    assert torch.equal(toy.run(PROMPTS, [iv.add(7, 0.0), iv.steer(torch.ones(128), 0.0, SITE)]), base)


def test_ablating_an_active_feature_is_causal_and_local(toy, base):
    feats = toy.features(PROMPTS)
    feature = int(feats[0, 5].argmax())
    out = toy.run(PROMPTS, [iv.ablate(feature, pos=5, rows=0)])
    delta = (out - base).abs().amax(-1)  # (B, T)
    assert delta[0, :5].max() == 0 and delta[0, 5] > 1e-3 and delta[1:].max() == 0


def test_clamp_equals_the_matching_add(toy):
    feats = toy.features(PROMPTS)
    f, p = int(feats[0, 6].argmax()), 6
    current = float(feats[0, p, f])
    clamped = toy.run(PROMPTS, [iv.clamp(f, 5.0, pos=p, rows=0)])
    added = toy.run(PROMPTS, [iv.add(f, 5.0 - current, pos=p, rows=0)])
    torch.testing.assert_close(clamped, added, atol=1e-5, rtol=0)


def test_feature_edit_moves_the_activation_along_the_decoder_row(toy):
    feats = toy.features(PROMPTS)
    f = int(feats[0, 4].argmax())
    before = toy.activations(PROMPTS, toy.sae_site)
    after = toy.activations(PROMPTS, toy.sae_site, [iv.add(f, 3.0, pos=4, rows=0)])
    expected = before.clone()
    expected[0, 4] += 3.0 * toy.sae.W_dec[f].detach()
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=0)


def test_steer_equals_a_plain_pytorch_hook(toy, base):
    """Independent of nnsight: a forward hook on block 1 of the HF module adds the same vector."""
    v = torch.randn(128, generator=torch.Generator().manual_seed(0))
    ours = toy.run(PROMPTS, [iv.steer(v, 2.5, SITE)])
    hf = toy.model._module
    handle = hf.transformer.h[1].register_forward_hook(lambda m, i, o: o + 2.5 * v)
    try:
        for i, p in enumerate(PROMPTS):
            ids = toy.tokenizer(p, return_tensors="pt").input_ids
            with torch.no_grad():
                ref = hf(ids).logits[0]
            torch.testing.assert_close(ours[i, : ids.shape[1]], ref, atol=1e-4, rtol=0)
    finally:
        handle.remove()


def test_project_out_leaves_no_component(toy):
    v = torch.randn(128, generator=torch.Generator().manual_seed(1))
    acts = toy.activations(PROMPTS, SITE, [iv.project_out(v, SITE)])
    real = toy.batch(PROMPTS).prompt_mask()
    assert acts[real].abs().sum(-1).min() > 0  # real activations, not padding
    assert (acts @ (v / v.norm()))[real].abs().max() < 1e-4


def test_per_row_interventions_in_one_batch_equal_one_at_a_time(toy):
    feats = toy.features(PROMPTS[:1])
    active = feats[0].amax(0).topk(6).indices.tolist()
    prompts = PROMPTS[:1] * 6
    edits = [iv.ablate(f, pos=3 + k, rows=k) if k % 2 else iv.add(f, 2.0, pos=3 + k, rows=k)
             for k, f in enumerate(active)]
    batched = toy.run(prompts, edits)
    for k, e in enumerate(edits):
        alone = toy.run(PROMPTS[:1], [iv.FeatureEdit(**{**e.__dict__, "rows": None})])
        torch.testing.assert_close(batched[k], alone[0], atol=1e-5, rtol=0)


def test_paired_sampling(toy):
    base = toy.generate(PROMPTS, 16, seed=5)
    same = toy.generate(PROMPTS, 16, [], seed=5)
    other = toy.generate(PROMPTS, 16, seed=6)
    assert torch.equal(base.tokens, same.tokens)
    assert not torch.equal(base.tokens, other.tokens)
    # A zero intervention at every step is also invisible.
    assert torch.equal(toy.generate(PROMPTS, 16, [iv.add(3, 0.0)], seed=5).tokens, base.tokens)


def test_generation_step_edits_act_on_that_step_only(toy):
    f, site = 11, toy.sae_site
    plain = toy.generate(PROMPTS, 6, seed=2, record=[site])
    edited = toy.generate(PROMPTS, 6, [iv.add(f, 6.0, step=3)], seed=2, record=[site])
    before, after = plain.records[site], edited.records[site]  # (B, steps, d)
    torch.testing.assert_close(after[:, :3], before[:, :3], atol=0, rtol=0)
    torch.testing.assert_close(after[:, 3] - before[:, 3], 6.0 * toy.sae.W_dec[f].detach().expand(3, -1),
                               atol=1e-4, rtol=0)


def test_batched_generation_with_row_edits_equals_single_runs(toy):
    prompts = PROMPTS[:1] * 3
    edits = [iv.add(20 + k, 8.0, pos=-1, rows=k) for k in range(3)]
    batched = toy.generate(prompts, 8, edits, seed=4)
    for k in range(3):
        single = toy.generate(PROMPTS[:1], 8, [iv.add(20 + k, 8.0, pos=-1)], seed=4)
        assert torch.equal(batched.tokens[k], single.tokens[0])


def test_logits_are_differentiable_wrt_one_hot_tokens(toy):
    """The gradient through gremlinkit equals the gradient through transformers directly."""
    prompt = PROMPTS[:1]
    oh = toy.one_hot(prompt).requires_grad_()
    toy.run(prompt, embeddings=toy.embed(oh))[0, -1, 9].backward()
    hf = toy.model._module
    oh2 = oh.detach().clone().requires_grad_()
    hf(inputs_embeds=oh2 @ hf.transformer.wte.weight).logits[0, -1, 9].backward()
    torch.testing.assert_close(oh.grad, oh2.grad, atol=1e-5, rtol=1e-4)
    assert oh.grad.abs().sum() > 0


def test_check_sae_equals_a_plain_pytorch_splice(toy):
    """Independent of nnsight: a pre-hook on block 2 of the HF module reads the site and splices the
    SAE's reconstruction into every position but the BOS, one unpadded story at a time. Explained
    variance, L0 and the mean next-token losses agree with `check_sae` on the same stories. (The
    card's figures are recomputed from HF hidden states in test_zoo.py.)"""
    docs = [torch.from_numpy(d) for d in lm.encode_docs(corpus.generate(20, seed=10_001), toy.tokenizer)]
    report = toy.check_sae(docs)
    hf, sae = toy.model._module, toy.sae
    seen = []

    def splice(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        seen.append(x[0, 1:])
        x = torch.cat([x[:, :1], sae.decode(sae.encode(x))[:, 1:]], 1)
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

    losses = {}
    for name in ("clean", "spliced"):
        handle = hf.transformer.h[2].register_forward_pre_hook(splice, with_kwargs=True) if name == "spliced" else None
        try:
            with torch.no_grad():
                nll = [torch.nn.functional.cross_entropy(hf(d[None]).logits[0, :-1], d[1:], reduction="sum")
                       for d in docs]
        finally:
            if handle is not None:
                handle.remove()
        losses[name] = float(sum(nll)) / sum(len(d) - 1 for d in docs)
    assert report["tokens"] == sum(len(d) - 1 for d in docs)
    xs = torch.cat(seen)
    codes = sae.encode(xs)
    ev = 1 - (sae.decode(codes) - xs).pow(2).sum() / (xs - xs.mean(0)).pow(2).sum()
    assert report["explained_variance"] == pytest.approx(float(ev), abs=1e-5)
    assert report["l0"] == pytest.approx(float((codes > 0).sum(-1).float().mean()), abs=1e-6)
    # float32 sums over ~3,000 tokens agree to ~1e-6; the splice itself costs ~1e-3 nats here.
    assert report["ce_loss_clean"] == pytest.approx(losses["clean"], abs=2e-5)
    assert report["ce_loss_spliced"] == pytest.approx(losses["spliced"], abs=2e-5)
    assert losses["spliced"] - losses["clean"] > 2e-4  # so a splice that did nothing would fail above


def test_reconstruction_fit_leaves_out_planted_massive_activations():
    """Two rows scaled 40x (massive activations, reconstructed almost exactly) lift the pooled
    explained variance towards 1; the typical figure equals numpy's over the other rows."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 24))
    x[[3, 250]] *= 40
    x_hat = x + rng.normal(scale=0.5, size=x.shape) * np.where(np.arange(400) % 247 == 3, 0.01, 1)[:, None]
    fit = iv.reconstruction_fit(torch.tensor(x), torch.tensor(x_hat))
    rest = np.setdiff1d(np.arange(400), [3, 250])
    want = 1 - ((x_hat[rest] - x[rest]) ** 2).sum() / ((x[rest] - x[rest].mean(0)) ** 2).sum()
    assert fit["massive_tokens"] == 2
    assert fit["explained_variance_typical"] == pytest.approx(want, abs=1e-5)
    assert fit["explained_variance"] > want + 0.05  # what the two rows hide
    plain = iv.reconstruction_fit(torch.tensor(x[rest]), torch.tensor(x_hat[rest]))
    assert plain["massive_tokens"] == 0 and plain["explained_variance"] == pytest.approx(want, abs=1e-5)


def test_check_sae_exposes_a_wrong_site(toy):
    wrong = gremlinkit.load("toy-base", sae=False)
    sae = SAE.load_from_disk(registry.path("toy-base-sae"))
    sae.cfg.metadata.hook_name = "blocks.0.hook_resid_pre"  # as if the metadata named the wrong site
    wrong.attach_sae(sae)
    report = wrong.check_sae(PROMPTS)
    assert report["explained_variance"] < 0.5


@pytest.mark.parametrize("call, err, match", [
    (lambda s: s.run(PROMPTS, [iv.steer(torch.ones(128), 1.0, "blocks.1.hook_resid_side")]), SiteError,
     "unknown site 'blocks.1.hook_resid_side'"),
    (lambda s: s.run(PROMPTS, [iv.ablate(70000)]), InterventionError,
     "feature 70000 is out of range: this SAE has 384 features"),
    (lambda s: s.run(PROMPTS, [iv.ablate(1, pos=40)]), InterventionError,
     "position 40 is beyond row 0, whose sequence has 12 tokens"),
    (lambda s: s.run([], []), InputError, "prompt list is empty"),
    (lambda s: s.run(PROMPTS, [iv.steer(torch.ones(64), 1.0, SITE)]), InterventionError,
     "the direction has 64 entries; site 'blocks.1.hook_resid_post' has width 128"),
    (lambda s: iv.steer(torch.tensor([1.0, float("nan")]), 1.0, SITE), InterventionError, "non-finite"),
    (lambda s: iv.project_out(torch.zeros(128), SITE), InterventionError, "project_out needs a non-zero direction"),
    (lambda s: s.generate(PROMPTS, 0), InputError, "max_new_tokens=0 must be a positive integer"),
    (lambda s: s.run(PROMPTS, [iv.ablate(1, rows=[5])]), InterventionError, "rows \\[5\\] are out of range"),
])
def test_bad_input_raises_a_named_error(toy, call, err, match):
    with pytest.raises(err, match=match) as info:
        call(toy)
    assert isinstance(info.value, GremlinkitError)


def test_sae_that_does_not_fit_its_site_is_refused(toy):
    sae = SAE.load_from_disk(registry.path("toy-base-sae"))
    with pytest.raises(SiteError, match="trained for site 'blocks.2.hook_resid_pre', not 'blocks.1.hook_resid_pre'"):
        toy.attach_sae(sae, site="blocks.1.hook_resid_pre")
    narrow = SAE.from_dict({**sae.cfg.to_dict(), "d_in": 64})
    with pytest.raises(SiteError, match="SAE d_in=64 does not match site 'blocks.2.hook_resid_pre', whose width is 128"):
        toy.attach_sae(narrow)


def test_generation_positions_may_reach_into_the_continuation(toy):
    n = len(toy.tokenizer(PROMPTS[1]).input_ids)
    with pytest.raises(InterventionError, match="beyond row 1"):
        toy.generate(PROMPTS, 4, [iv.ablate(1, pos=n + 4)])
    # pos n + 2 holds the token sampled at step 2; forward 3 reads it, so only step 3's record moves.
    base = toy.generate(PROMPTS, 4, seed=3, record=["features"])
    out = toy.generate(PROMPTS, 4, [iv.add(7, 30.0, pos=n + 2, rows=1)], seed=3, record=["features"])
    assert torch.equal(out.tokens[:, :3], base.tokens[:, :3]) and torch.equal(out.tokens[[0, 2]], base.tokens[[0, 2]])
    moved = (out.records["features"] - base.records["features"]).abs().amax(-1)  # (B, steps)
    assert moved[1, 3] > 1.0 and moved[1, :3].max() == 0 and moved[[0, 2]].max() == 0


def test_reflect_flips_the_component_and_keeps_the_rest(toy):
    v = torch.randn(128, generator=torch.Generator().manual_seed(2))
    u = v / v.norm()
    before = toy.activations(PROMPTS, SITE)
    after = toy.activations(PROMPTS, SITE, [iv.reflect(v, SITE)])
    real = toy.batch(PROMPTS).prompt_mask()
    torch.testing.assert_close((after @ u)[real], -(before @ u)[real], atol=1e-4, rtol=0)
    rest = lambda x: x - (x @ u)[..., None] * u  # noqa: E731
    torch.testing.assert_close(rest(after)[real], rest(before)[real], atol=1e-4, rtol=0)


def test_site_reads_are_differentiable_wrt_one_hot_tokens(toy):
    """d(MLP pre-activation)/d(one-hot) through gremlinkit equals the gradient through transformers."""
    prompt = PROMPTS[:1]
    site = "blocks.1.mlp.hook_pre"
    oh = toy.one_hot(prompt).requires_grad_()
    toy.activations_at(prompt, [site], embeddings=toy.embed(oh))[site][0, -1, 7].backward()
    hf = toy.model._module
    captured = {}
    handle = hf.transformer.h[1].mlp.c_fc.register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    try:
        oh2 = oh.detach().clone().requires_grad_()
        hf(inputs_embeds=oh2 @ hf.transformer.wte.weight)
        captured["x"][0, -1, 7].backward()
    finally:
        handle.remove()
    torch.testing.assert_close(oh.grad, oh2.grad, atol=1e-5, rtol=1e-4)
    assert oh.grad.abs().sum() > 0


def _positions(batch: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt positions (B, T) and lengths (B,) of a batch without padding."""
    return torch.arange(width).repeat(batch, 1), torch.full((batch,), width)


def test_per_row_position_lists_edit_each_row_at_its_own_positions(toy):
    f = int(toy.features(PROMPTS[:1])[0].amax(0).argmax())  # an active feature
    both = toy.run(PROMPTS[:1] * 2, [iv.add(f, 3.0, pos=[[2], [4, 5]])])
    for row, pos in ((0, [2]), (1, [4, 5])):
        alone = toy.run(PROMPTS[:1], [iv.add(f, 3.0, pos=p) for p in pos])  # the same edits at int positions
        torch.testing.assert_close(both[row], alone[0], atol=1e-5, rtol=0)
    assert torch.equal(both[0, :2], both[1, :2])  # before either edit, the rows agree


def test_a_half_precision_stream_is_edited_in_float32_and_rounded_once():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, generator=gen).bfloat16()
    v = torch.randn(8, generator=gen)
    out = iv.apply(x, [iv.steer(v, 0.37, SITE)], None, *_positions(2, 3))
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, (x.float() + 0.37 * v).bfloat16())  # one rounding, after the float32 edit


def test_projecting_out_at_one_position_leaves_the_others_bit_for_bit():
    gen = torch.Generator().manual_seed(1)
    x, v = torch.randn(2, 4, 8, generator=gen), torch.randn(8, generator=gen)
    out = iv.apply(x, [iv.project_out(v, SITE, pos=1)], None, *_positions(2, 4))
    assert torch.equal(out[:, [0, 2, 3]], x[:, [0, 2, 3]])
    assert (out[:, 1] @ (v / v.norm())).abs().max() < 1e-5
