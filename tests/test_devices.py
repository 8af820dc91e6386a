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
def test_half_precision_on_a_cpu_without_its_matmul_is_named_at_load(monkeypatch, native):
    """oneDNN says whether this CPU multiplies bfloat16 natively (here made to say so, or not):
    without it, loading in bfloat16 warns and names float32; float32 never warns."""
    import warnings

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gremlinkit.load("toy-base", device="cpu", dtype="bfloat16", sae=False)
        gremlinkit.load("toy-base", device="cpu", dtype="float32", sae=False)
    slow = [w for w in caught if "no native half-precision matmul" in str(w.message)]
    assert len(slow) == (0 if native else 1)
    assert native or "dtype=bfloat16" in str(slow[0].message) and "dtype='float32'" in str(slow[0].message)
