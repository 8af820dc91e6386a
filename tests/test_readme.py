"""The README's "Using it" examples run as written.

The one hub example, ``gremlinkit.load("gpt2", sae=("gpt2-small-res-jb", "blocks.8.hook_resid_pre"))``,
runs against an offline stand-in of the hub: a Hugging Face cache holding a small random GPT-2
(9 layers, width 768, a byte-level BPE tokenizer that adds no BOS, as GPT-2's does) under ``gpt2``,
and a sae_lens SAE under the release's own repository and folder, with ``HF_HUB_OFFLINE=1``. So the
real loading code (nnsight's ``TransformersModel("gpt2")``, sae_lens's ``SAE.from_pretrained``) runs
unchanged; only the weights are stand-ins.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sae_lens import SAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformers import AutoModelForCausalLM, GPT2Config, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
REVISION = "0" * 40
SAE_REPO = "jbloom/GPT2-Small-SAEs-Reformatted"  # where sae_lens's release table points gpt2-small-res-jb


def _snapshot(cache: Path, repo: str) -> Path:
    """The snapshot folder of ``repo`` in a Hugging Face cache, with ``main`` pointing at it."""
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(REVISION)
    return base / "snapshots" / REVISION


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, gpt2_like):
    cache = tmp_path_factory.mktemp("hf-hub")
    tok = PreTrainedTokenizerFast.from_pretrained(gpt2_like[0])
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_layer=9, n_head=12, n_embd=768, n_inner=256, n_positions=128,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model_dir = _snapshot(cache, "gpt2")
    AutoModelForCausalLM.from_config(cfg).eval().save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    sae = SAE.from_dict(StandardSAEConfig(d_in=768, d_sae=1024, metadata=SAEMetadata(
        model_name="gpt2-small", hook_name="blocks.8.hook_resid_pre", prepend_bos=True)).to_dict())
    sae.save_model(_snapshot(cache, SAE_REPO) / "blocks.8.hook_resid_pre")
    return cache


def _using_it_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Using it"): text.index("## Notebooks")]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_examples_run_as_written(hub_cache, tmp_path):
    blocks = _using_it_blocks()
    assert len(blocks) >= 2 and any('gremlinkit.load("gpt2"' in b for b in blocks)
    checks = """
assert gpt2.prepends_bos and gpt2.sae_site == "blocks.8.hook_resid_pre" and gpt2.d_model == 768
assert gpt2.batch(["hello"]).input_ids[0, 0] == gpt2.tokenizer.bos_token_id
assert gpt2.features(["The old sailor looked at the sea."]).shape[-1] == 1024
assert smol.dtype == torch.bfloat16 and smol.prepends_bos
print("README OK")
"""
    script = tmp_path / "readme.py"
    script.write_text("\n".join(blocks) + checks)
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "README OK" in out.stdout
    assert "following the SAE" in out.stderr  # the gpt2 tokenizer/SAE BOS conflict is named


def test_the_readme_experiment_and_widget_examples_run_as_written(tmp_path):
    """Every other ``python`` block of the README, in order, in one fresh interpreter (experiments
    write their outputs under the working directory, here a scratch one)."""
    text = (ROOT / "README.md").read_text()
    rest = text[text.index("## Notebooks"):]
    blocks = re.findall(r"```python\n(.*?)```", rest, re.S)
    assert len(blocks) >= 4
    checks = """
assert set(res.calls.columns) >= {"condition", "call"} and len(res.calls) == 5  # the sign-flip result
assert set(result.summary.columns) >= {"half_life", "persistent"} and len(result.summary) == 16  # 8 features x 2 modes
assert result.metrics == ps.metrics(result.summary)
assert cfg.features == "top-8" and len(s.texts("steered")) > 0
print("README OK")
"""
    script = tmp_path / "readme_rest.py"
    script.write_text("\n".join(blocks) + checks)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "README OK" in out.stdout
