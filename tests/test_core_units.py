"""Exact checks of the core's small pieces (batches, the BOS policy, Gumbel noise), each against a
value computed here by hand. Written against the mutants that `make mutation` found alive."""

import warnings

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from gremlinkit.errors import InputError
from gremlinkit.generation import GumbelMax, gumbel_noise
from gremlinkit.prompts import make_batch, resolve_bos, tokenizer_prepends_bos


@pytest.fixture(scope="module")
def bpe(gpt2_like):
    tok = PreTrainedTokenizerFast.from_pretrained(gpt2_like[0])
    assert tok.pad_token_id is None and tok.bos_token_id is not None
    return tok


def test_make_batch_pads_on_the_left_with_the_pad_id_or_zero(toy, bpe):
    rows = [[0, 5, 6], [0, 7], [0]]
    b = make_batch(rows, toy.tokenizer, bos=True)
    pad = toy.tokenizer.pad_token_id
    assert pad not in (None, 0)
    assert b.input_ids.tolist() == [[0, 5, 6], [pad, 0, 7], [pad, pad, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1], [0, 1, 1], [0, 0, 1]]
    assert b.input_ids.dtype == b.attention_mask.dtype == torch.long
    assert b.sizes == (3, 2, 1) and b.lengths.tolist() == [3, 2, 1]
    assert b.positions().tolist() == [[0, 1, 2], [-1, 0, 1], [-1, -1, 0]]
    assert make_batch([[4, 5], [6]], bpe).input_ids.tolist() == [[4, 5], [0, 6]]  # no pad token: 0


def test_a_batch_of_ids_has_a_bos_only_when_asked_and_every_row_starts_with_it(toy):
    tok = toy.tokenizer
    assert make_batch([[0, 5], [0]], tok, bos=True).bos  # a row may be the BOS alone
    assert not make_batch([[0, 5], [5, 6]], tok, bos=True).bos
    assert not make_batch([[0, 5], [0, 6]], tok, bos=False).bos


def test_make_batch_bounds_are_named(toy):
    assert make_batch([[0, 1, 2]], toy.tokenizer, max_length=3).sizes == (3,)  # exactly the limit is fine
    with pytest.raises(InputError, match="prompt 1 has 4 tokens; this model reads at most 3"):
        make_batch([[0], [0, 1, 2, 3]], toy.tokenizer, max_length=3)
    with pytest.raises(InputError, match="^the prompt list is empty: pass at least one prompt$"):
        make_batch([], toy.tokenizer)
    with pytest.raises(InputError, match="^prompt 1 is empty"):
        make_batch([[0], []], toy.tokenizer)


def test_split_keeps_rows_bos_and_sizes_and_trims_each_part(toy):
    rows = [[0, 5, 6, 7], [0, 7], [0, 8, 9], [0], [0, 4]]
    b = make_batch(rows, toy.tokenizer, bos=True)
    parts = b.split(2)
    assert [p.sizes for p in parts] == [(4, 2), (3, 1), (2,)]
    assert all(p.bos for p in parts)
    for start, p in zip((0, 2, 4), parts):
        alone = make_batch(rows[start:start + 2], toy.tokenizer, bos=True)
        assert torch.equal(p.input_ids, alone.input_ids) and torch.equal(p.attention_mask, alone.attention_mask)
        assert p.lengths.tolist() == list(p.sizes)


def test_tokenizer_prepends_bos_tells_the_two_kinds_apart(toy, bpe):
    assert tokenizer_prepends_bos(toy.tokenizer) is True
    assert tokenizer_prepends_bos(bpe) is False


def test_resolve_bos_names_each_conflict(toy, bpe):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no conflict, no warning
        assert resolve_bos(toy.tokenizer, None) is True and resolve_bos(bpe, None) is False
        assert resolve_bos(bpe, None, sae_prepend_bos=False) is False
        assert resolve_bos(bpe, True, sae_prepend_bos=True) is True
    with pytest.warns(UserWarning) as rec:
        assert resolve_bos(bpe, None, sae_prepend_bos=True) is True
    assert str(rec[0].message) == ("the tokenizer does not prepend a BOS token, but the SAE was trained with "
                                   "prepend_bos=True: following the SAE (prepends_bos=True); pass bos=True or "
                                   "bos=False to choose")
    with pytest.warns(UserWarning) as rec:
        assert resolve_bos(toy.tokenizer, None, sae_prepend_bos=False) is False
    assert str(rec[0].message).startswith("the tokenizer prepends a BOS token, but the SAE was trained with "
                                          "prepend_bos=False")
    with pytest.warns(UserWarning, match=r"^bos=False disagrees with the SAE's metadata prepend_bos=True: its "
                                         r"features were trained on prompts with a leading BOS$"):
        assert resolve_bos(bpe, False, sae_prepend_bos=True) is False
    with pytest.warns(UserWarning, match="trained on prompts without a leading BOS$"):
        resolve_bos(toy.tokenizer, True, sae_prepend_bos=False)


def test_gumbel_noise_is_minus_log_minus_log_of_the_seeded_uniforms():
    u = torch.rand(5, 7, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(gumbel_noise(11, 5, 7), -torch.log(-torch.log(u)), atol=1e-6, rtol=0)


def test_gumbel_noise_stays_finite_at_the_ends_of_the_unit_interval(monkeypatch):
    monkeypatch.setattr(torch, "rand", lambda *shape, generator=None, device=None: torch.tensor([[0.0, 1.0]]))
    noise = gumbel_noise(0, 1, 2)
    assert torch.isfinite(noise).all() and noise[0, 0] < -3 and noise[0, 1] > 15


def test_gumbel_max_tempers_the_logits_then_adds_this_steps_noise():
    noise = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)  # (rows, steps, vocab)
    proc = GumbelMax(noise, prompt_width=5, temperature=0.5)
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0]])
    out = proc(torch.zeros(2, 7, dtype=torch.long), scores)  # step 2
    torch.testing.assert_close(out, scores / 0.5 + noise[:, 2], atol=0, rtol=0)
    assert torch.equal(GumbelMax(noise, 5, 0.0)(torch.zeros(2, 6, dtype=torch.long), scores), scores)  # greedy


def test_site_maps_read_the_config_and_name_the_valid_range():
    from types import SimpleNamespace

    from gremlinkit.errors import SiteError
    from gremlinkit.sites import Site, SiteMap

    serial = SiteMap.for_config(SimpleNamespace(model_type="gpt_neox", num_hidden_layers=2))
    parallel = SiteMap.for_config(SimpleNamespace(model_type="gpt_neox", num_hidden_layers=2,
                                                  use_parallel_residual=True))
    assert not serial.parallel_residual and parallel.parallel_residual is True
    assert "blocks.1.hook_resid_mid" in serial.names and "blocks.1.hook_resid_mid" not in parallel.names
    with pytest.raises(SiteError, match="'blocks.1.hook_resid_mid'"):
        parallel.resolve("blocks.1.hook_resid_mid")  # a parallel block has no state between its halves
    with pytest.raises(SiteError, match=r"valid sites look like 'blocks.0.hook_resid_pre' ... "
                                        r"'blocks.1.hook_resid_post' \(see subject.sites\)"):
        serial.resolve("blocks.2.hook_resid_pre")
    ios = {n: serial.resolve(n).io for n in serial.names}
    assert ios["hook_embed"] == ios["ln_final.hook_normalized"] == ios["blocks.0.hook_attn_out"] == "output"
    assert ios["blocks.0.hook_resid_pre"] == ios["blocks.0.hook_resid_mid"] == "input"
    assert {ios[f"blocks.0.{h}"] for h in ("mlp.hook_pre", "hook_mlp_out", "hook_resid_post")} == {"output"}
    # Sites sort into the order the forward pass reaches them.
    assert sorted(serial.names, key=lambda n: serial.resolve(n).order) == serial.names
    with pytest.raises(SiteError, match="io='OUTPUT' must be 'input' or 'output'"):
        Site("x", "m", "OUTPUT", (0, 0))


def test_intervention_constructors_keep_every_field():
    from gremlinkit import interventions as iv

    v = torch.tensor([3.0, 4.0])
    for edit, kind in ((iv.ablate(5, pos=2, rows=[1], step=3), "ablate"), (iv.add(5, 1.5, pos=2, rows=[1], step=3), "add"),
                       (iv.clamp(5, 0.5, pos=2, rows=[1], step=3), "clamp")):
        assert (edit.kind, edit.feature, edit.pos, edit.rows, edit.step) == (kind, 5, 2, [1], 3)
    for edit, kind in ((iv.steer(v, 2.0, "s", pos=2, rows=[1], step=3), "steer"),
                       (iv.reflect(v, "s", pos=2, rows=[1], step=3), "reflect"),
                       (iv.project_out(v, "s", pos=2, rows=[1], step=3), "project_out")):
        assert (edit.kind, edit.site, edit.pos, edit.rows, edit.step) == (kind, "s", 2, [1], 3)
        assert edit.vector.dtype == torch.float32
    assert iv.reflect(v, "s").vector.tolist() == pytest.approx([0.6, 0.8])  # unit length
    assert iv.steer([1, 2], 1.0, "s").vector.dtype == torch.float32  # ints become a float direction
    for make in (iv.reflect, iv.project_out):
        with pytest.raises(iv.InterventionError, match=f"^{make.__name__} needs a non-zero direction$"):
            make(torch.zeros(2), "s")
    with pytest.raises(iv.InterventionError, match="^the direction has 2 non-finite entries$"):
        iv.steer(torch.tensor([1.0, float("nan"), float("inf")]), 1.0, "s")


def test_validate_names_the_exact_valid_ranges():
    from gremlinkit import interventions as iv

    kw = dict(n_rows=3, max_len=[4, 2, 5], d_model=2, d_sae=10)
    iv.validate(iv.ablate(9, pos=1, rows=2), **kw)  # the last feature, a valid position, the last row
    with pytest.raises(iv.InterventionError, match=r"feature 10 is out of range: this SAE has 10 features \(valid 0..9\)"):
        iv.validate(iv.ablate(10), **kw)
    with pytest.raises(iv.InterventionError, match=r"position 2 is beyond row 1, whose sequence has 2 tokens "
                                                    r"\(valid -2..1\)"):
        iv.validate(iv.ablate(0, pos=2), **kw)
    iv.validate(iv.ablate(0, pos=-2), **kw)
    with pytest.raises(iv.InterventionError, match=r"rows \[3\] are out of range: the batch has 3 rows \(valid 0..2\)"):
        iv.validate(iv.ablate(0, rows=3), **kw)
    iv.validate(iv.ablate(0, pos=[[3], [1], [4]]), **kw)  # per-row lists up to each row's last token
    with pytest.raises(iv.InterventionError, match=r"positions \[2\] are beyond row 1, whose sequence has 2 tokens"):
        iv.validate(iv.ablate(0, pos=[[0], [2], [0]]), **kw)


def test_seeded_gumbel_draws_each_rows_noise_step_by_step():
    """Row r at step k is gumbel_noise(seeds[r], steps, vocab)[k]; rows sharing a seed share it;
    the default device is the CPU; steps must come in order."""
    from gremlinkit.generation import SeededGumbel

    noise = SeededGumbel([3, 5, 3], vocab=7)
    full = {s: gumbel_noise(s, 3, 7) for s in (3, 5)}
    for k in range(3):
        step = noise.at(k)
        assert step.device.type == "cpu" and step.shape == (3, 7)
        torch.testing.assert_close(step, torch.stack([full[3][k], full[5][k], full[3][k]]), atol=0, rtol=0)
        assert noise.at(k) is step  # asked again: the same draw
    with pytest.raises(RuntimeError, match="step 5 was asked for after step 2"):
        noise.at(5)


def _random_sae(cfg, seed: int):
    """An SAE of ``cfg`` with seeded random parameters and decoder norms far from 1 (0.5 to 3);
    the global generator is left seeded, so the test's inputs follow from ``seed`` too."""
    from sae_lens import SAE

    torch.manual_seed(seed)
    sae = SAE.from_dict(cfg.to_dict())
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p))
        sae.W_dec.mul_(torch.linspace(0.5, 3.0, cfg.d_sae)[:, None])
    return sae


def test_pre_activations_equal_the_activation_where_a_rescaling_topk_sae_fires():
    """A top-k SAE that rescales its codes by its decoder norms applies the scale after its
    pre-activation hook; `encode_with_pre` applies it too, so where a feature is on the two agree,
    and elsewhere the pre-activation still carries the (scaled) value."""
    from sae_lens.saes.topk_sae import TopKSAEConfig

    from gremlinkit.interventions import encode_with_pre

    sae = _random_sae(TopKSAEConfig(d_in=8, d_sae=16, k=3, rescale_acts_by_decoder_norm=True), seed=0)
    x = torch.randn(5, 8)
    post, pre = encode_with_pre(sae, x)
    on = post > 0
    assert on.sum(-1).tolist() == [3] * 5
    torch.testing.assert_close(pre[on], post[on], atol=1e-5, rtol=1e-5)
    norms = sae.W_dec.norm(dim=-1)
    raw = (x - sae.b_dec * getattr(sae.cfg, "apply_b_dec_to_input", True)) @ sae.W_enc + sae.b_enc
    torch.testing.assert_close(pre, raw * norms, atol=1e-4, rtol=1e-4)


def test_pre_activations_of_a_sae_that_does_not_rescale_are_its_plain_encoder_output():
    """A standard (ReLU) SAE's config has no decoder-norm rescaling at all: its pre-activations are
    the encoder's output as it is, whatever its decoder norms."""
    from sae_lens import StandardSAEConfig

    from gremlinkit.interventions import encode_with_pre

    sae = _random_sae(StandardSAEConfig(d_in=8, d_sae=16), seed=1)
    assert not hasattr(sae.cfg, "rescale_acts_by_decoder_norm")
    x = torch.randn(5, 8)
    post, pre = encode_with_pre(sae, x)
    raw = (x - sae.b_dec * getattr(sae.cfg, "apply_b_dec_to_input", True)) @ sae.W_enc + sae.b_enc
    torch.testing.assert_close(pre, raw, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(post, torch.relu(raw), atol=1e-5, rtol=1e-5)


def test_clamp_defaults_to_every_position():
    import gremlinkit.interventions as iv

    assert iv.clamp(3, 2.0) == iv.clamp(3, 2.0, pos="all")


def test_a_split_batch_keeps_its_bos_flag_and_row_sizes(toy):
    b = make_batch([[5, 6, 7], [8], [9, 10]], toy.tokenizer, bos=False)
    parts = b.split(2)
    assert [p.bos for p in parts] == [False, False] and [p.sizes for p in parts] == [(3, 1), (2,)]
    with_bos = make_batch([[0, 5, 6], [0]], toy.tokenizer, bos=True)
    assert [p.bos for p in with_bos.split(1)] == [True, True]
    assert with_bos.prompt_mask().tolist() == [[True, True, True], [True, False, False]]  # BOS kept by default


def test_splitting_a_batch_never_reads_its_lengths_back_from_the_device():
    """Row sizes travel as Python ints: a split made where tensors have no readable values (fake
    tensors, as a GPU's would be without a sync) still knows each part's sizes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from gremlinkit.prompts import Batch

    with FakeTensorMode():
        ids = torch.zeros(3, 3, dtype=torch.long)  # (B, T)
        batch = Batch(ids, torch.ones_like(ids), torch.tensor([3, 1, 2]), False, (3, 1, 2))
        parts = batch.split(2)
    assert [p.sizes for p in parts] == [(3, 1), (2,)]


def test_gumbel_max_adds_a_whole_rows_noise_to_a_single_row():
    noise = torch.arange(12, dtype=torch.float32).reshape(1, 3, 4)  # one row: (1, steps, vocab)
    scores = torch.tensor([[1.0, 0.0, -1.0, 2.0]])
    out = GumbelMax(noise, prompt_width=2, temperature=2.0)(torch.zeros(1, 3, dtype=torch.long), scores)  # step 1
    torch.testing.assert_close(out, scores / 2.0 + noise[:, 1], atol=0, rtol=0)


def test_masks_are_boolean_and_negative_positions_count_from_each_rows_end(toy):
    import gremlinkit.interventions as iv

    b = make_batch([[0, 5, 6, 7], [0, 8]], toy.tokenizer, bos=True)
    positions, lengths = b.positions(), b.lengths
    last = iv.mask(iv.ablate(3, pos=-1), positions, lengths, step=None)
    assert last.dtype == torch.bool
    assert last.tolist() == [[False, False, False, True], [False, False, False, True]]  # left-padded: both end last
    second_last = iv.mask(iv.ablate(3, pos=-2), positions, lengths, step=None)
    assert second_last.tolist() == [[False, False, True, False], [False, False, True, False]]
    other_step = iv.mask(iv.ablate(3, step=2), positions, lengths, step=0)
    assert other_step.dtype == torch.bool and not other_step.any()


def test_a_site_map_has_resid_mid_unless_the_residual_is_parallel():
    from types import SimpleNamespace

    from gremlinkit.sites import SiteMap

    assert SiteMap("llama", 2).parallel_residual is False  # the default: a sequential residual stream
    llama = SiteMap.for_config(SimpleNamespace(model_type="llama", num_hidden_layers=2))  # no such attribute
    assert llama.parallel_residual is False and "blocks.1.hook_resid_mid" in llama.names


def test_seeded_gumbel_stays_finite_at_the_ends_of_the_unit_interval(monkeypatch):
    from gremlinkit.generation import SeededGumbel

    monkeypatch.setattr(torch, "rand", lambda *shape, generator=None, device=None: torch.tensor([0.0, 1.0]))
    noise = SeededGumbel([0], vocab=2).at(0)
    assert torch.isfinite(noise).all() and noise[0, 0] < -3 and noise[0, 1] > 15


def test_an_empty_prompt_of_token_ids_is_refused_by_name_with_a_bos_policy_too(toy):
    from gremlinkit.errors import InputError

    with pytest.raises(InputError, match="prompt 1 is empty"):
        make_batch([[toy.tokenizer.bos_token_id, 5], []], toy.tokenizer, bos=True)


def test_writing_a_site_keeps_the_rest_of_a_tuple_output_and_reads_its_first():
    """Some transformers versions return (hidden, cache, ...) from a block: a write replaces the
    hidden state only, a read takes it, and a module with a plain output is written whole.
    Plain objects with ``output`` stand in for nnsight envoys; paths may index lists."""
    from types import SimpleNamespace

    from gremlinkit.sites import Site, envoy_at, read, write

    block = SimpleNamespace(output=(torch.zeros(2), "cache", "weights"))
    norm = SimpleNamespace(output=torch.zeros(2))
    model = SimpleNamespace(h=[SimpleNamespace(), block], ln_f=norm)
    assert envoy_at(model, "h.1") is block
    write(model, Site("blocks.1.hook_resid_post", "h.1", "output", (1, 9)), torch.ones(2))
    assert torch.equal(block.output[0], torch.ones(2)) and block.output[1:] == ("cache", "weights")
    assert torch.equal(read(model, Site("blocks.1.hook_resid_post", "h.1", "output", (1, 9))), torch.ones(2))
    write(model, Site("ln_final.hook_normalized", "ln_f", "output", (2, 0)), torch.full((2,), 3.0))
    assert torch.equal(norm.output, torch.full((2,), 3.0))


def test_make_batch_adds_no_bos_unless_asked(toy):
    plain = make_batch(["mira says"], toy.tokenizer)
    assert not plain.bos and plain.input_ids[0].tolist() == toy.tokenizer("mira says", add_special_tokens=False).input_ids
    assert make_batch(["mira says"], toy.tokenizer, bos=True).input_ids[0, 0] == toy.tokenizer.bos_token_id


def test_an_edit_skipped_at_a_generation_step_would_have_touched_nothing_there():
    """`may_touch` decides on the host which edits can apply at a step; it may keep an edit that
    touches nothing, but never drops one whose mask selects a position."""
    import gremlinkit.interventions as iv

    sizes = [3, 5]
    lengths = torch.tensor(sizes)
    for step in range(5):
        positions = (torch.tensor([[-1, -1, 0, 1, 2], [0, 1, 2, 3, 4]]) if step == 0
                     else (lengths + step - 1)[:, None])  # the prompt, then each row's newest token
        for edit in [iv.ablate(1, pos=p, rows=r, step=s) for p in (0, 2, 3, 4, 5, 6, 7, -1) for r in (None, 0, 1)
                     for s in (None, step, step + 1)]:
            if not iv.may_touch(edit, sizes, step):
                assert not iv.mask(edit, positions, lengths, step).any(), (edit, step)
    assert not iv.may_touch(iv.ablate(1, pos=2), sizes, 1)  # inside both prompts: done at step 0
    assert iv.may_touch(iv.ablate(1, pos=5), sizes, 1) and not iv.may_touch(iv.ablate(1, pos=5, rows=0), sizes, 1)
    assert iv.may_touch(iv.ablate(1, pos="all"), sizes, 3) and not iv.may_touch(iv.ablate(1, step=2), sizes, 3)
