"""The zoo's artefacts: shipped ones meet their targets, and a quick rebuild reproduces itself."""

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from sae_lens import SAE
from transformers import AutoModelForCausalLM, AutoTokenizer

from gremlinkit import cli as gk_cli
from gremlinkit.zoo import build, cards, corpus, lm, planted, registry

BASE, SAE_NAME = registry.path("toy-base"), registry.path("toy-base-sae")


@pytest.fixture(scope="module")
def hf():
    return AutoModelForCausalLM.from_pretrained(BASE).eval(), AutoTokenizer.from_pretrained(BASE)


@pytest.fixture(scope="module")
def heldout(hf):
    _, tok = hf
    spec = build.FULL
    return lm.encode_docs(corpus.generate(spec.heldout_docs, spec.heldout_seed), tok)


def test_shipped_artefacts_fit_the_size_budget():
    """Each shipped artefact stays under 25 MB and the shipped zoo under 40 MB; the real model is cached."""
    sizes = {a: sum(p.stat().st_size for p in registry.path(a).rglob("*") if p.is_file())
             for a, art in registry.ARTEFACTS.items() if not art.cached}
    for name, size in sizes.items():
        assert size <= 25 * 2**20, f"{name} takes {size / 2**20:.1f} MB, over the 25 MB budget"
    assert sum(sizes.values()) <= 40 * 2**20, f"the zoo takes {sum(sizes.values()) / 2**20:.1f} MB, over 40 MB"
    assert not (registry.ARTEFACT_DIR / "smollm2-135m").exists()  # never committed


def test_base_heldout_loss_matches_its_card_and_beats_the_baselines(hf, heldout):
    model, _ = hf
    card = cards.card("toy-base")["heldout"]
    loss = lm.heldout_loss(model, heldout)
    assert loss == pytest.approx(card["loss"], abs=1e-4)
    assert loss < card["bigram_baseline"] < card["unigram_baseline"]


def test_ngram_baselines_against_a_direct_count():
    # Independent check of the bigram estimator on a two-token toy stream.
    docs = [np.array([0, 1, 2, 1, 2]), np.array([0, 1, 2])]
    got = lm.ngram_baselines(docs, [np.array([0, 1, 2])], vocab_size=3)
    p01 = (2 + 0.1) / (2 + 0.3)  # 0 -> 1 seen twice out of 2 transitions from 0
    p12 = (3 + 0.1) / (3 + 0.3)
    assert got["bigram"] == pytest.approx(-(np.log(p01) + np.log(p12)) / 2)


def test_sae_metrics_recomputed_from_hf_hidden_states(hf, heldout):
    """EV, L0 and dead fraction from activations read by transformers (not nnsight) and numpy."""
    model, _ = hf
    sae = SAE.load_from_disk(SAE_NAME)
    site = sae.cfg.metadata.hook_name
    assert site == "blocks.2.hook_resid_pre"
    xs = []
    with torch.no_grad():
        for d in heldout:
            hs = model(torch.from_numpy(d)[None], output_hidden_states=True).hidden_states
            xs.append(hs[2][0, 1:])  # input to block 2, BOS dropped as in training
    x = torch.cat(xs)
    with torch.no_grad():
        f = sae.encode(x)
        recon = sae.decode(f).numpy()
    xn = x.numpy()
    ev = 1 - ((recon - xn) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum()
    l0 = (f > 0).sum(1).float().mean().item()
    dead = 1 - (f > 0).any(0).float().mean().item()
    card = cards.card("toy-base-sae")["heldout_metrics"]
    assert ev == pytest.approx(card["explained_variance"], abs=0.01)
    assert l0 == pytest.approx(card["l0"], abs=0.5)
    assert dead == pytest.approx(card["dead_fraction"], abs=0.01)
    assert ev >= 0.85 and l0 <= 30 and dead <= 0.10


def _digest(directory):
    h = hashlib.sha256()
    for name in ("model.safetensors", "sae_weights.safetensors"):
        if (directory / name).exists():
            h.update((directory / name).read_bytes())
    return h.hexdigest()


def _cli(capsys, *args: str) -> str:
    """``python -m gremlinkit ARGS`` run in this process (`gremlinkit.cli.main`), so the suite does
    not pay a fresh interpreter's imports for each call; returns what it printed."""
    capsys.readouterr()
    assert gk_cli.main(list(args)) == 0
    return capsys.readouterr().out


@pytest.mark.slow
def test_quick_build_meets_its_targets_and_is_deterministic(tmp_path, capsys):
    def cli(*args: str) -> str:
        return _cli(capsys, *args)

    cmd = ["zoo", "build", "--quick", "--out"]
    cli(*cmd, str(tmp_path / "a"))
    base = json.loads((registry.path("toy-base", tmp_path / "a") / "card.json").read_text())
    sae = json.loads((registry.path("toy-base-sae", tmp_path / "a") / "card.json").read_text())
    assert base["heldout"]["loss"] < base["heldout"]["bigram_baseline"]
    assert base["training"]["final_mean_last_10pct"] < base["training"]["first"] / 3
    assert sae["heldout_metrics"]["explained_variance"] >= 0.85
    assert sae["heldout_metrics"]["l0"] <= 30
    for name in ("toy-rl", "toy-sft"):  # the fine-tuned organisms, with their cards
        card = json.loads((registry.path(name, tmp_path / "a") / "card.json").read_text())
        assert card["training"]["steps"] == build.QUICK.finetune.steps
        assert 0 <= card["eval"]["reward"] <= 1 and card["eval"]["kl_to_base"] > 0
        assert (registry.path(name, tmp_path / "a") / "model.safetensors").exists()
    for name, eigenvalue in planted.EIGENVALUES.items():  # what they learned: tests/test_planted.py, on the full zoo
        card = json.loads((registry.path(name, tmp_path / "a") / "card.json").read_text())
        assert card["truth"]["eigenvalue"] == eigenvalue and card["training"]["steps"] == build.QUICK.planted.steps
        assert (registry.path(name, tmp_path / "a") / "model.safetensors").exists()
    # The dose series: one run per horizon, each organism a snapshot of it, further along with more steps.
    dose = {n: json.loads((registry.path(n, tmp_path / "a") / "card.json").read_text()) for n in registry.DOSES
            if not registry.ARTEFACTS[n].full_only}
    for name, card in dose.items():
        horizon, _ = registry.DOSES[name]
        assert card["training"]["steps"] == build.QUICK.dose.steps(name) and card["reward"]["horizon"] == horizon
        assert card["training"]["schedule_steps"] == 8 and f"last 16 of {horizon}" in card["reward"]["definition"]
    changes = [dose[n]["weight_change"]["relative_to_toy_base"] for n in ("toy-rl-20", "toy-rl-80", "toy-rl-320")]
    assert 0 < changes[0] < changes[1] < changes[2]
    rs = json.loads((registry.path("toy-rs", tmp_path / "a") / "card.json").read_text())
    sampled = rs["rejection_sampling"]
    assert sampled["samples"] == build.QUICK.finetune.steps * build.QUICK.finetune.rows  # as many as toy-rl drew
    assert sampled["mean_reward_kept"] > sampled["mean_reward_sampled"]  # the best of each group
    assert rs["training"]["steps"] == build.QUICK.finetune.steps and rs["training"]["lr"] == build.QUICK.finetune.sft_lr
    # `--missing` (what `make organisms` runs) builds exactly what is absent.
    rs_digest = _digest(registry.path("toy-rs", tmp_path / "a"))
    shutil.rmtree(registry.path("toy-rs", tmp_path / "a"))
    built = cli(*cmd, str(tmp_path / "a"), "--missing")
    assert [line.split()[1] for line in built.splitlines() if line.startswith("building")] == ["toy-rs"]
    assert _digest(registry.path("toy-rs", tmp_path / "a")) == rs_digest  # and rebuilt bit for bit
    # The same seeds give bit-identical weights (toy-rs above, toy-distill below), and a dose run
    # stopped early gives its first snapshot: toy-rl-20 alone, from the same toy-base and its SAE (its
    # card measures the SAE's transfer), equals the snapshot of the whole run.
    for name in ("toy-base", "toy-base-sae", "toy-rl"):  # toy-rl: the distilled student's teacher
        shutil.copytree(registry.path(name, tmp_path / "a"), registry.path(name, tmp_path / "b"))
    cli(*cmd, str(tmp_path / "b"), "--only", "toy-rl-20", "--only", "toy-distill")  # several names, one process
    for name in ("toy-rl-20", "toy-distill"):
        assert _digest(registry.path(name, tmp_path / "a")) == _digest(registry.path(name, tmp_path / "b")), name
    # The no-RL token organisms and the distilled student: cards with reward, KL and SAE fit.
    for name in ("toy-norl", "toy-norl-ignored", "toy-distill"):
        card = json.loads((registry.path(name, tmp_path / "a") / "card.json").read_text())
        assert card["training"]["steps"] == build.QUICK.finetune.steps and card["eval"]["kl_to_base"] > 0
        assert 0 < card["sae_transfer"]["explained_variance"] <= 1
    norl_card = json.loads((registry.path("toy-norl", tmp_path / "a") / "card.json").read_text())
    assert norl_card["marker"]["fraction"] == 0.5
    listed = cli("zoo", "list", "--out", str(tmp_path / "a"))
    assert f"heldout_loss={round(base['heldout']['loss'], 4)}" in listed


def test_unknown_artefact_is_a_clear_cli_error():
    out = subprocess.run([sys.executable, "-m", "gremlinkit", "zoo", "build", "--only", "toy-bsae"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "unknown zoo artefact 'toy-bsae'" in out.stderr and "toy-base-sae" in out.stderr


def test_zoo_check_names_each_missing_file(tmp_path):
    shutil.copytree(registry.ARTEFACT_DIR, tmp_path / "zoo")
    check = [sys.executable, "-m", "gremlinkit", "zoo", "check", "--out", str(tmp_path / "zoo")]
    assert subprocess.run(check, capture_output=True, text=True).returncode == 0
    (tmp_path / "zoo" / "toy-rl" / "model.safetensors").unlink()
    (tmp_path / "zoo" / "toy-base-sae" / "cfg.json").unlink()
    out = subprocess.run(check, capture_output=True, text=True)
    assert out.returncode == 1
    assert "toy-rl/model.safetensors" in out.stderr and "toy-base-sae/cfg.json" in out.stderr
    assert "2 zoo file(s) missing" in out.stderr


@pytest.mark.slow
def test_quick_real_sae_build_is_deterministic(tmp_path, capsys):
    """The smollm2 SAE's build, at its quick size, gives bit-identical weights twice."""
    from conftest import install_debian_package

    from gremlinkit.zoo import english

    if not english.SOURCES.is_dir():
        install_debian_package(english.DEBIAN_PACKAGE)
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "smollm2-135m").symlink_to(registry.require("smollm2-135m"))
    for run in ("a", "b"):  # the same seeds and settings twice: the weights must agree bit for bit
        _cli(capsys, "zoo", "build", "--quick", "--only", "smollm2-135m-sae", "--out", str(tmp_path / run))
    digests = [_digest(registry.path("smollm2-135m-sae", tmp_path / run)) for run in ("a", "b")]
    card = json.loads((registry.path("smollm2-135m-sae", tmp_path / "a") / "card.json").read_text())
    assert digests[0] == digests[1]
    assert card["sae"]["site"] == "blocks.15.hook_resid_pre" and card["text"]["train_words"] > 50_000
    assert card["text"]["windows"] == {"documentation": 240, "stories": 60, "own_samples": 8}
    assert card["train_metrics"]["massive_tokens"] == 0 < card["sae"]["massive_tokens_left_out"]  # left out
    # 256 features, 60k samples, 8 held-out windows of 31 tokens: small but real (0.59 here)
    assert card["heldout_metrics"]["explained_variance_typical"] > 0.5
