"""Device hygiene: every tensor gremlinkit makes goes on the subject's device.

With no GPU, torch's `FakeTensorMode` stands in: inside it a model moved to another device holds
fake tensors, and an op that meets tensors on two devices raises `FakeTensorDeviceMismatchError`,
without computing any value. On this CPU-only torch, fake ``cuda`` tensors cannot be indexed (that
needs a CUDA device guard), so the whole-subject checks use fake ``meta`` tensors as the other
device: a tensor created on the default CPU device is caught the same way. Code that reads values
(generation's stopping checks inside transformers, `check_sae`'s boolean selection, slice
positions) cannot run fake and is covered by the CUDA tests, which run where a GPU is present.
"""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

try:
    from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError
except ImportError:  # torch before 2.13 raises a plain RuntimeError for a device mismatch
    FakeTensorDeviceMismatchError = RuntimeError

import gremlinkit
from gremlinkit import interventions as iv
from gremlinkit.errors import InputError
from gremlinkit.generation import GumbelMax, gumbel_noise
from gremlinkit.prompts import make_batch

PROMPTS = ["mira says :", "ada is a kind old sailor . ada says : ahoy"]
def cuda(f):
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(f))


@pytest.fixture
def edits():
    return _edits()  # made outside the fake mode: constructors check a vector's values


@pytest.fixture
def fake_toy(edits):
    """toy-base and its SAE, moved to a fake device; yields inside the fake mode."""
    toy = gremlinkit.load("toy-base", device="cpu")
    with FakeTensorMode(allow_non_fake_inputs=True):
        toy.model._module.to("meta")
        toy.sae.to("meta")
        yield toy


def _edits():
    v = torch.randn(128)  # a user's vector on the CPU: gremlinkit moves it
    return [iv.add(3, 2.0, pos=1, rows=0), iv.ablate(4, pos=[[0], [1]]), iv.clamp(5, 1.0, pos=-1),
            iv.steer(v, 2.0, "blocks.1.hook_resid_post"), iv.project_out(v, "blocks.0.hook_resid_post"),
            iv.reflect(v, "blocks.1.hook_resid_mid")]


def test_every_intervention_kind_stays_on_the_subjects_device(fake_toy, edits):
    assert fake_toy.device == torch.device("meta")
    assert fake_toy.run(PROMPTS, edits).device.type == "meta"
    assert fake_toy.features(PROMPTS, interventions=edits[:3]).device.type == "meta"
    acts = fake_toy.activations_at(PROMPTS, ["blocks.1.hook_resid_post", "blocks.2.mlp.hook_pre"], edits)
    assert {a.device.type for a in acts.values()} == {"meta"}


def test_batches_masks_and_embeddings_stay_on_the_subjects_device(fake_toy):
    batch = fake_toy.batch(PROMPTS)
    assert {batch.input_ids.device.type, batch.positions().device.type, batch.prompt_mask(True).device.type,
            fake_toy.counted(PROMPTS).device.type} == {"meta"}
    oh = fake_toy.one_hot(PROMPTS)
    assert oh.device.type == "meta" and oh.dtype == fake_toy.dtype
    assert fake_toy.run(PROMPTS, embeddings=fake_toy.embed(oh)).device.type == "meta"


def test_paired_sampling_noise_follows_the_scores():
    with FakeTensorMode(allow_non_fake_inputs=True):
        noise = gumbel_noise(0, 3, 121, device="meta")[None]
        scores = torch.randn(2, 121, device="meta")
        out = GumbelMax(noise, 5, 1.0)(torch.zeros(2, 6, dtype=torch.long, device="meta"), scores)
        assert noise.device.type == "meta" and out.device.type == "meta"


def test_batches_are_made_on_a_fake_cuda_device():
    """A batch is built on the device in one call per tensor, with no host-to-device copy to forget."""
    from transformers import AutoTokenizer

    from gremlinkit.zoo import registry

    tok = AutoTokenizer.from_pretrained(registry.path("toy-base"))
    with FakeTensorMode():
        batch = make_batch(PROMPTS, tok, bos=True, device="cuda:0")
        assert {t.device.type for t in (batch.input_ids, batch.attention_mask, batch.lengths)} == {"cuda"}
        assert batch.sizes == (4, 12) and batch.bos


def test_the_check_can_fail_a_cpu_tensor_meeting_the_device_is_caught(fake_toy):
    """The negative control: a mask left on the CPU, as gremlinkit once made them, raises."""
    x = torch.randn(2, 3, 128, device="meta")
    cpu_positions = torch.zeros(2, 3, dtype=torch.long)  # made without device=
    with pytest.raises(FakeTensorDeviceMismatchError):
        iv.apply(x, [iv.add(3, 1.0)], fake_toy.sae, cpu_positions, torch.ones(2, dtype=torch.long))


# ----------------------------------------------------------------------------- on a real GPU

@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_subject_matches_the_cpu(dtype):
    """Every public call on CUDA, against the CPU fp32 subject (relative L2 < 0.05 in bf16, 1e-4 in fp32)."""
    toy = gremlinkit.load("toy-base", device="cpu")
    gpu = gremlinkit.load("toy-base", device="cuda", dtype=dtype)
    assert gpu.device.type == "cuda" and gpu.sae.W_enc.device.type == "cuda"
    tol = 1e-4 if dtype == torch.float32 else 0.05
    for edits in ([], _edits()):
        ref, got = toy.run(PROMPTS, edits), gpu.run(PROMPTS, edits)
        assert got.device.type == "cuda"
        assert float((got.float().cpu() - ref).norm() / ref.norm()) < tol
    feats = gpu.features(PROMPTS, interventions=[iv.add(3, 2.0, pos=slice(1, 3))])
    assert feats.device.type == "cuda"
    gen = gpu.generate(PROMPTS, 8, [iv.add(3, 2.0, step=1)], seed=0, record=["features"])
    assert gen.tokens.device.type == "cuda" and gen.records["features"].device.type == "cuda"
    assert gpu.check_sae(PROMPTS)["explained_variance"] == pytest.approx(toy.check_sae(PROMPTS)["explained_variance"],
                                                                         abs=0.02)
    oh = gpu.one_hot(PROMPTS[:1]).requires_grad_()
    gpu.run(PROMPTS[:1], embeddings=gpu.embed(oh))[0, -1, 9].float().backward()
    assert oh.grad.device.type == "cuda"


def test_a_subject_stays_on_the_device_asked_for_when_a_gpu_is_present(monkeypatch):
    """transformers' pipeline puts a model it did not place itself on the first GPU when one is
    present. Here it is told a GPU is present (none is); a CPU subject must stay on the CPU, with
    the pipeline's own device the same, and never try to reach CUDA (which would raise here)."""
    from transformers.pipelines import base

    monkeypatch.setattr(base, "is_torch_cuda_available", lambda: True)
    subject = gremlinkit.load("toy-base", device="cpu")
    assert subject.device.type == "cpu" and subject.model.pipeline.device == torch.device("cpu")
    assert {p.device.type for p in subject.model._module.parameters()} == {"cpu"}


@pytest.mark.parametrize("device, dtype, cuda, match", [
    ("cuda:x", None, 0, r"device='cuda:x' is not a device: use 'cpu', 'cuda'"),
    ("cuda", None, 0, r"device='cuda': this machine has no CUDA GPU"),
    ("cuda:2", None, 1, r"device='cuda:2': this machine has 1 CUDA GPU\(s\), cuda:0 to cuda:0"),
    ("cuda", "bfloat16", 1, r"dtype=bfloat16 cannot run on 'cuda' \(an old GPU\); use dtype='float16'"),
])
def test_a_device_or_dtype_the_machine_cannot_run_is_named_before_anything_loads(monkeypatch, device, dtype, cuda,
                                                                                 match):
    """Checked against what torch reports (here made to report ``cuda`` GPUs without bfloat16)."""
    from gremlinkit.errors import InputError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "an old GPU")
    with pytest.raises(InputError, match=match):
        gremlinkit.load("toy-base", device=device, dtype=dtype)


@pytest.mark.parametrize("native", [False, True])
def test_half_precision_on_a_cpu_without_its_matmul_runs_matmuls_in_float32(monkeypatch, native):
    """oneDNN says whether this CPU multiplies bfloat16 natively (here made to say so, or not):
    without it, a bfloat16 subject runs its matrix products in float32 and rounds each back, so its
    logits stay bfloat16 and sit as close to float32's as native bfloat16's do; float32 is untouched."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    half = gremlinkit.load("toy-base", device="cpu", dtype="bfloat16", sae=False)
    full = gremlinkit.load("toy-base", device="cpu", dtype="float32", sae=False)
    assert half.float32_matmuls is (not native) and full.float32_matmuls is False
    logits, reference = half.run(PROMPTS), full.run(PROMPTS)
    assert logits.dtype == torch.bfloat16
    error = (logits.float() - reference).norm() / reference.norm()
    assert error < 0.02, f"relative L2 error {error:.4f} against float32"
    with pytest.raises(InputError, match=r"float32_matmuls=True is for a model on this machine's CPU, not on 'meta'"):
        gremlinkit.load("toy-base", device="meta", dtype="bfloat16", sae=False, float32_matmuls=True)
    forced = gremlinkit.load("toy-base", device="cpu", dtype="bfloat16", sae=False, float32_matmuls=native)
    assert forced.float32_matmuls is native
    assert not torch.equal(forced.run(PROMPTS), logits)  # the two paths round differently


def test_float32_matmuls_round_once_after_a_float32_product():
    """Inside `Float32Matmul` a bfloat16 product equals the float32 product rounded once; float32
    products and other operations are untouched, and gradients flow through the casts."""
    from gremlinkit.cpu_half import Float32Matmul

    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*shape, generator=gen) for shape in [(3, 64), (32, 64), (32,)])
    xh, wh, bh = x.bfloat16().requires_grad_(), w.bfloat16(), b.bfloat16()
    with Float32Matmul():
        got = torch.nn.functional.linear(xh, wh, bh)
        product = xh @ wh.T
        untouched = torch.nn.functional.linear(x, w, b)
        added = xh + xh
    assert got.dtype == torch.bfloat16 and torch.equal(got, (xh.float() @ wh.float().T + bh.float()).bfloat16())
    assert torch.equal(product, (xh.float() @ wh.float().T).bfloat16())
    assert torch.equal(untouched, torch.nn.functional.linear(x, w, b)) and torch.equal(added, xh + xh)
    got.sum().backward()
    assert xh.grad.dtype == torch.bfloat16 and torch.allclose(xh.grad.float(), wh.float().sum(0), atol=0.05)


@pytest.mark.parametrize("block", [2048, 7])
def test_float32_matmul_gradients_match_float32_and_save_only_half_tensors(monkeypatch, block):
    """`HalfLinear`'s output and gradients equal float32 autograd's rounded once to bfloat16 (within
    one bfloat16 step where a weight read in blocks of 7 rows sums in another order), and the graph
    holds the bfloat16 operands, not float32 copies of the weight."""
    from gremlinkit import cpu_half

    monkeypatch.setattr(cpu_half, "BLOCK", block)
    gen = torch.Generator().manual_seed(1)
    x, w, b = (torch.randn(*shape, generator=gen) for shape in [(2, 5, 48), (300, 48), (300,)])
    xh, wh, bh = (t.bfloat16().requires_grad_() for t in (x, w, b))
    xf, wf, bf = (t.bfloat16().float().requires_grad_() for t in (x, w, b))
    gh = torch.randn(2, 5, 300, generator=gen).bfloat16()
    with cpu_half.Float32Matmul():
        out = torch.nn.functional.linear(xh, wh, bh)
    assert out.grad_fn.saved_tensors and all(t.dtype == torch.bfloat16 for t in out.grad_fn.saved_tensors)
    reference = torch.nn.functional.linear(xf, wf, bf)
    out.backward(gh)
    reference.backward(gh.float())
    assert torch.equal(out, reference.bfloat16())
    for half, full in [(xh, xf), (wh, wf), (bh, bf)]:
        assert half.grad.dtype == torch.bfloat16
        if block > 300:
            assert torch.equal(half.grad, full.grad.bfloat16())
        else:
            assert torch.allclose(half.grad.float(), full.grad, rtol=2 ** -7, atol=1e-5)
