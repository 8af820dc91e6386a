"""The self-check (`gremlinkit.check`, `gremlinkit check`, `load(validate=True)`): every family's tiny
checkpoint passes it in float32 and bfloat16, as the README's table says, and it fails, naming the
site, where the map is wrong."""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

import gremlinkit
from gremlinkit import check, cli, sites, tiny
from gremlinkit.errors import SiteError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import support_table  # noqa: E402


def test_every_family_passes_and_the_readme_table_is_what_the_check_finds(tmp_path):
    full = check.support(tmp_path)
    table = full[full.float32 != "refused at load"]
    assert list(table.family) == [f.replace("_sequential", " (sequential)") for f in tiny.FAMILIES]
    assert len(table) >= 12
    for column in ("float32", "bfloat16", "generation with edits"):
        assert table[column].str.startswith("pass").all(), table[["family", column]].to_string()
    refused = full[full.float32 == "refused at load"]  # named, with the reason, in the error and the table
    assert ", ".join(refused.family).split(", ") == list(sites.UNMAPPED) and refused.notes.str.len().gt(20).all()
    with pytest.raises(SiteError, match=r"architecture 'mamba' has no site layout: state-space mixer blocks"):
        sites.SiteMap("mamba", 2)
    moe = table.set_index("family").loc["mixtral"]
    assert moe["transformers class"] == "MixtralForCausalLM" and "mlp.hook_pre" in moe.sites
    assert support_table.current(support_table.README.read_text()) == check.support_markdown(full), \
        "the README's support table is stale: run `make support-table`"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny.build("llama", tmp_path_factory.mktemp("tiny") / "llama")


def test_a_wrong_site_map_fails_naming_the_site(llama, monkeypatch):
    """The negative control: the final norm mapped to the unembedding instead."""
    wrong = dataclasses.replace(sites.LAYOUTS["llama"], final_norm="lm_head")
    monkeypatch.setitem(sites.LAYOUTS, "llama", wrong)
    report = check.run(gremlinkit.load(llama, device="cpu"))
    failed = report[~report.passed]
    assert set(failed.site) == {"ln_final.hook_normalized"}
    assert set(failed.check) == {"width", "equals hidden_states"}  # 300 logits wide, not 32
    with pytest.raises(check.CheckError, match=r"failed 2 of .*\n  width at ln_final.hook_normalized: 300"):
        gremlinkit.load(llama, device="cpu", validate=True)


def test_a_read_that_fails_is_reported_not_raised(llama, monkeypatch):
    """A site mapped to a module that runs before the one it claims: nnsight refuses the read."""
    wrong = dataclasses.replace(sites.LAYOUTS["llama"], final_norm="model.layers.2.post_attention_layernorm")
    monkeypatch.setitem(sites.LAYOUTS, "llama", wrong)
    failed = check.run(gremlinkit.load(llama, device="cpu")).query("not passed")
    assert "(the check raised)" in set(failed.site)
    assert failed.bound.str.contains("OutOfOrderError").any()


def test_each_block_must_add_up(llama, monkeypatch):
    """Reading attn_out from the attention's query projection breaks resid_mid = resid_pre + attn_out."""
    wrong = dataclasses.replace(sites.LAYOUTS["llama"], attn="self_attn.q_proj")
    monkeypatch.setitem(sites.LAYOUTS, "llama", wrong)
    failed = check.run(gremlinkit.load(llama, device="cpu")).query("not passed")
    assert {"resid_mid = resid_pre + attn_out", "resid_post = resid_pre + attn_out + mlp_out"} <= set(failed.check)


def test_a_sound_checkpoint_loads_with_validate_and_a_poor_sae_only_warns(gpt2_like):
    model, sae = gpt2_like  # a random SAE explains little of its site
    with pytest.warns(UserWarning, match=r"sae explained variance at blocks.1.hook_resid_pre is .*expected >= 0.5"):
        subject = gremlinkit.load(model, sae=sae, device="cpu", validate=True)
    report = check.run(subject)
    bos = report.set_index("check").value
    assert bos["bos: the tokenizer prepends one"] == 0 and bos["bos: the SAE's prepend_bos"] == 1
    assert bos["bos: prompts start with a BOS"] == 1  # the SAE's metadata wins, as load warns


def test_an_unknown_family_is_refused_naming_the_missing_map(tmp_path):
    from transformers import AutoModelForCausalLM, BloomConfig

    AutoModelForCausalLM.from_config(BloomConfig(vocab_size=300, n_layer=2, n_head=4,
                                                 hidden_size=32)).save_pretrained(tmp_path)
    tiny.tokenizer().save_pretrained(tmp_path)
    with pytest.raises(SiteError, match=r"architecture 'bloom' has no site layout \(.*llama.*add a Layout row"):
        gremlinkit.load(tmp_path, device="cpu")


def test_the_command_prints_one_line_per_check_and_exits_by_the_result(llama, monkeypatch, capsys):
    assert cli.main(["check", str(llama), "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "equals hidden_states" in out and "bfloat16" in out and "0 failed" in out
    wrong = dataclasses.replace(sites.LAYOUTS["llama"], final_norm="lm_head")
    monkeypatch.setitem(sites.LAYOUTS, "llama", wrong)
    assert cli.main(["check", str(llama)]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_the_real_model_and_its_sae_pass():
    report = check.run(gremlinkit.load("smollm2-135m", dtype=torch.bfloat16))
    assert report.passed.all(), report.query("not passed").to_string()
    assert report.query("check == 'sae explained variance'").value.item() > 0.6
    assert len(report.query("check == 'equals hidden_states'")) == 60  # 30 resid_pre, 29 resid_post, ln_final
