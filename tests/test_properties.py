"""Property-based tests of the core invariants on toy-base, over random prompts, paddings, positions,
rows and steps (hypothesis draws them; ``derandomize`` makes every run draw the same examples).

Tolerances: two forwards of the same row in differently padded batches agree to float32 rounding
(1e-4 on logits of size ~10); edits that cancel in feature space, and edits of zero, are exact.
"""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gremlinkit import interventions as iv
from gremlinkit.prompts import make_batch

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
ATOL = 1e-4
VOCAB = range(3, 121)  # the zoo's word tokens (0-2 are BOS, PAD and EOS)
D_SAE, D_MODEL = 384, 128
SITE = "blocks.1.hook_resid_post"

tokens = st.lists(st.sampled_from(VOCAB), min_size=1, max_size=14)
rows = st.lists(tokens, min_size=1, max_size=5)  # ragged, so the batch is left-padded


def _with_bos(prompts: list[list[int]]) -> list[list[int]]:
    return [[0] + p for p in prompts]


@st.composite
def edited_batches(draw):
    """Prompts, and for each row one edit aimed at that row only: a feature add, ablate or clamp,
    or a steer, at a random position inside the row."""
    prompts = _with_bos(draw(rows))
    edits = []
    for r, p in enumerate(prompts):
        pos = draw(st.integers(0, len(p) - 1))
        kind = draw(st.sampled_from(["add", "ablate", "clamp", "steer"]))
        if kind == "steer":
            seed = draw(st.integers(0, 2**16))
            v = torch.randn(D_MODEL, generator=torch.Generator().manual_seed(seed))
            edits.append(iv.steer(v, draw(st.floats(-4, 4)), SITE, pos=pos, rows=r))
        else:
            f = draw(st.integers(0, D_SAE - 1))
            value = draw(st.floats(-8, 8))
            make = {"add": lambda: iv.add(f, value, pos=pos, rows=r), "ablate": lambda: iv.ablate(f, pos=pos, rows=r),
                    "clamp": lambda: iv.clamp(f, value, pos=pos, rows=r)}[kind]
            edits.append(make())
    return prompts, edits


def _alone(edit: iv.Intervention) -> iv.Intervention:
    return type(edit)(**{**edit.__dict__, "rows": None})


@SETTINGS
@given(prompts=rows)
def test_left_padding_and_batch_composition_do_not_change_a_row(toy, prompts):
    prompts = _with_bos(prompts)
    batched = toy.run(prompts)
    for i, p in enumerate(prompts):
        alone = toy.run([p])[0]
        torch.testing.assert_close(batched[i, :len(p)], alone, atol=ATOL, rtol=0)
        assert (batched[i, len(p):] == 0).all()  # prompt indexing: nothing past the prompt's own tokens


@SETTINGS
@given(case=edited_batches())
def test_k_per_row_edits_in_one_forward_equal_k_separate_runs(toy, case):
    prompts, edits = case
    batched = toy.run(prompts, edits)
    for i, (p, e) in enumerate(zip(prompts, edits)):
        torch.testing.assert_close(batched[i, :len(p)], toy.run([p], [_alone(e)])[0], atol=ATOL, rtol=0)


@SETTINGS
@given(prompts=rows, feature=st.integers(0, D_SAE - 1), pos=st.integers(0, 14), seed=st.integers(0, 2**16))
def test_an_edit_of_zero_is_the_identity(toy, prompts, feature, pos, seed):
    prompts = _with_bos(prompts)
    v = torch.randn(D_MODEL, generator=torch.Generator().manual_seed(seed))
    at = min(pos, min(len(p) for p in prompts) - 1)
    zero = [iv.add(feature, 0.0, pos=at), iv.steer(v, 0.0, SITE, pos="all")]
    assert torch.equal(toy.run(prompts, zero), toy.run(prompts))


@SETTINGS
@given(prompts=rows, data=st.data())
def test_ablate_then_adding_the_activation_back_restores_the_run(toy, prompts, data):
    prompts = _with_bos(prompts)
    row = data.draw(st.integers(0, len(prompts) - 1))
    pos = data.draw(st.integers(0, len(prompts[row]) - 1))
    feats = toy.features(prompts)[row, pos]
    active = feats.nonzero().flatten().tolist()
    feature = data.draw(st.sampled_from(active))
    value = float(feats[feature])
    restored = toy.run(prompts, [iv.ablate(feature, pos=pos, rows=row), iv.add(feature, value, pos=pos, rows=row)])
    original = toy.run(prompts)
    # An edit codes only the positions it touches, and `features` codes the whole batch: the SAE's
    # matmul over a different number of rows may round the value in its last bits.
    torch.testing.assert_close(restored, original, rtol=1e-5, atol=1e-5)
    assert torch.equal(restored[:, :pos], original[:, :pos])  # nothing before the edit moves at all
    ablated = toy.run(prompts, [iv.ablate(feature, pos=pos, rows=row)])
    assert (ablated[row, pos] - restored[row, pos]).abs().max() > 1e-3  # the ablation alone did something


@settings(max_examples=200, deadline=None, derandomize=True)
@given(prompts=rows, bos=st.booleans(), width=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_to_and_from_prompt_index_are_inverses(toy, prompts, bos, width, seed):
    batch = make_batch(_with_bos(prompts) if bos else prompts, toy.tokenizer, bos=bos)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch.input_ids.shape, width, generator=gen)  # batch (padded) indexing
    assert torch.equal(batch.from_prompt_index(batch.to_prompt_index(x), into=x), x)
    y = torch.randn(*batch.input_ids.shape, width, generator=gen)  # prompt indexing
    mask = batch.prompt_mask()[..., None]
    assert torch.equal(batch.to_prompt_index(batch.from_prompt_index(y, into=x)), torch.where(mask, y, 0.0))
    assert batch.bos == bos and batch.sizes == tuple(len(p) + bos for p in prompts)


@SETTINGS
@given(prompts=rows, seed=st.integers(0, 2**31 - 1), steps=st.integers(1, 8), data=st.data())
def test_paired_generation_with_the_same_seed_and_no_edit_is_identical(toy, prompts, seed, steps, data):
    prompts = _with_bos(prompts)
    first = toy.generate(prompts, steps, seed=seed)
    step = data.draw(st.integers(0, steps - 1))
    again = toy.generate(prompts, steps, [iv.add(data.draw(st.integers(0, D_SAE - 1)), 0.0, step=step)], seed=seed)
    assert torch.equal(first.tokens, again.tokens) and first.text == again.text
    # Each row, generated alone with its own seed, is the row of the batch: padding is invisible.
    seeds = [seed + i for i in range(len(prompts))]
    batched = toy.generate(prompts, steps, seed=seeds)
    for i, p in enumerate(prompts):
        assert torch.equal(toy.generate([p], steps, seed=seeds[i]).tokens[0], batched.tokens[i])
