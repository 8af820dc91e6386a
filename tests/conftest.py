import os
import subprocess

import pytest
import torch
from sae_lens import SAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, GPT2Config, PreTrainedTokenizerFast

# Two cores here; mutation testing forks its workers and runs them on one thread each (see the Makefile).
torch.set_num_threads(int(os.environ.get("GREMLINKIT_TORCH_THREADS", "2")))


@pytest.fixture(scope="session")
def toy():
    """The shipped toy-base with its SAE, loaded once."""
    import gremlinkit

    return gremlinkit.load("toy-base")


TEXTS = ["The old sailor looked at the sea.", "A kind scholar wrote a long letter to her friend."]
EOT = "<|endoftext|>"


@pytest.fixture(scope="session")
def gpt2_like(tmp_path_factory):
    """(model directory, SAE directory) of a GPT-2-style model whose tokenizer prepends nothing."""
    root = tmp_path_factory.mktemp("gpt2-like")  # an offline stand-in for the hub's gpt2
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(TEXTS * 20, trainers.BpeTrainer(vocab_size=300, special_tokens=[EOT],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOT, eos_token=EOT)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_layer=2, n_head=4, n_embd=32, n_positions=64,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    AutoModelForCausalLM.from_config(cfg).eval().save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    sae = SAE.from_dict(StandardSAEConfig(
        d_in=32, d_sae=64, metadata=SAEMetadata(hook_name="blocks.1.hook_resid_pre", prepend_bos=True)).to_dict())
    sae.save_model(root / "sae")
    return root / "model", root / "sae"


def install_debian_package(name: str) -> None:
    """``apt-get install`` a Debian package the test needs; skip only if that cannot be done here."""
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", name]):
        try:
            done = subprocess.run(sudo + cmd, env=env, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as err:
            pytest.skip(f"{name} is not installed and `{' '.join(cmd)}` could not run: {err}")
        if done.returncode != 0:
            pytest.skip(f"{name} is not installed and `{' '.join(cmd)}` failed: {done.stderr.strip()[-300:]}")


_binder: dict = {}


def _is_binder(item) -> bool:
    return item.nodeid.startswith("tests/test_binder.py")


def pytest_collection_modifyitems(session, config, items):
    """The Binder test runs last, so that its environment build, started in the background at
    collection, overlaps the rest of the suite instead of being waited for."""
    items.sort(key=_is_binder)  # stable: order kept otherwise


def pytest_collection_finish(session):
    """Start the Binder environment build at once when its test is collected (see test_binder.py)."""
    if any(map(_is_binder, session.items)):
        from test_binder import start_build

        root = session.config._tmp_path_factory.mktemp("binder-build")
        _binder["build"] = start_build(root)


@pytest.fixture
def binder_build():
    if "build" not in _binder:
        pytest.skip("the Binder build starts when the session collects test_binder.py")
    return _binder["build"]
