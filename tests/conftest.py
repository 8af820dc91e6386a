import os
import subprocess
from pathlib import Path

import pytest
import torch
from sae_lens import SAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformers import AutoModelForCausalLM, GPT2Config

from gremlinkit import tiny

# Two cores here. With several pytest-xdist workers (`make test`), or mutation testing's forked
# workers (see the Makefile), each process and the kernels and scripts it starts use one thread.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") != "1":
    os.environ.setdefault("GREMLINKIT_TORCH_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", os.environ["GREMLINKIT_TORCH_THREADS"])
torch.set_num_threads(int(os.environ.get("GREMLINKIT_TORCH_THREADS", "2")))


@pytest.fixture(scope="session")
def toy():
    """The shipped toy-base with its SAE, loaded once."""
    import gremlinkit

    return gremlinkit.load("toy-base")


TEXTS, EOT = tiny.TEXTS, tiny.EOT


@pytest.fixture(scope="session")
def gpt2_like(tmp_path_factory):
    """(model directory, SAE directory) of a GPT-2-style model whose tokenizer prepends nothing."""
    root = tmp_path_factory.mktemp("gpt2-like")  # an offline stand-in for the hub's gpt2
    return _tiny_gpt2(root, n_positions=64, sae_bos=True)


def _tiny_gpt2(root, n_positions: int, sae_bos: bool):
    """(model directory, SAE directory) under ``root``: a seeded 2-layer GPT-2 of width 32 with a
    byte-level BPE tokenizer that adds no BOS, and a random SAE at ``blocks.1.hook_resid_pre``."""
    tok = tiny.tokenizer()
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_layer=2, n_head=4, n_embd=32, n_positions=n_positions,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    AutoModelForCausalLM.from_config(cfg).eval().save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    sae = SAE.from_dict(StandardSAEConfig(
        d_in=32, d_sae=64, metadata=SAEMetadata(hook_name="blocks.1.hook_resid_pre", prepend_bos=sae_bos)).to_dict())
    sae.save_model(root / "sae")
    return root / "model", root / "sae"


@pytest.fixture(scope="session")
def one_trait_world(tmp_path_factory):
    """(model directory, pairs file, SAE directory): a pairs file of one trait (kind/cruel, 60 pairs
    over 8 templates) with no generation prompts, a tiny GPT-2 that reads it (byte-level BPE, no BOS,
    512 positions) and a random SAE at its middle residual stream."""
    root = tmp_path_factory.mktemp("one-trait")
    names = ["Ada", "Bruno", "Cleo", "Dario", "Elsa", "Felix", "Gina", "Hugo"]
    rows = [f"kind,{t},{n} was kind to the sailor {t}.,{n} was cruel to the sailor {t}."
            for t in range(8) for n in names[:7 + (t >= 4)]]
    (root / "kind.csv").write_text("trait,template,positive,negative\n" + "\n".join(rows) + "\n")
    model, sae = _tiny_gpt2(root, n_positions=512, sae_bos=False)
    return model, root / "kind.csv", sae


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


def _is_binder(nodeid: str) -> bool:
    return nodeid.startswith("tests/test_binder.py")


def _binder_root(config) -> Path:
    """Where the Binder build runs: under the session's base temporary folder, which pytest-xdist's
    workers share as the parent of their own."""
    base = config._tmp_path_factory.getbasetemp()
    return (base.parent if hasattr(config, "workerinput") else base) / "binder-build"


def _start_binder_build(config) -> None:
    from test_binder import start_build

    if not getattr(config, "_binder_started", False):
        config._binder_started = True
        start_build(_binder_root(config))


# The longest tests (minutes each on 2 cores), started first so that no worker is left with one at the end.
LONGEST = ("tests/test_zoo.py::test_quick_build", "tests/test_trl_family.py::test_quick_build",
           "tests/test_notebooks.py::test_reference_run",
           "tests/test_browser.py", "tests/test_zoo.py::test_quick_real_sae", "tests/test_workers.py::test_ray")


def pytest_collection_modifyitems(session, config, items):
    """The slowest tests first and the Binder test last: on several workers the long ones start at
    once, and the Binder environment build (started in the background when its test is collected)
    overlaps the rest of the suite instead of being waited for."""
    def rank(item) -> tuple:
        longest = [i for i, prefix in enumerate(LONGEST) if item.nodeid.startswith(prefix)]
        return _is_binder(item.nodeid), item.get_closest_marker("slow") is None, longest[0] if longest else len(LONGEST)

    items.sort(key=rank)  # stable: file order otherwise


def pytest_collection_finish(session):
    """Without workers: start the Binder build as soon as its test is collected (see test_binder.py)."""
    if not hasattr(session.config, "workerinput") and any(_is_binder(i.nodeid) for i in session.items):
        _start_binder_build(session.config)


def pytest_xdist_node_collection_finished(node, ids):
    """With pytest-xdist: the controller starts the build once, when a worker has collected its test."""
    if any(map(_is_binder, ids)):
        _start_binder_build(node.config)


@pytest.fixture
def binder_build(request):
    """The Binder build's folder (test_binder.py waits there for its result)."""
    return _binder_root(request.config)
