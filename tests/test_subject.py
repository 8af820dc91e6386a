"""Reading activations and generating through nnsight, checked against transformers directly."""

import pytest
import torch

import gremlinkit
from gremlinkit.errors import InputError, SiteError
from gremlinkit.zoo import registry


def test_activations_equal_hf_hidden_states(toy):
    prompts = ["mira is a kind honest old sailor . mira says :", "ada is a cruel sly young scholar ."]
    hf = toy.model._module
    for i, p in enumerate(prompts):
        ids = toy.tokenizer(p, return_tensors="pt").input_ids
        with torch.no_grad():
            hs = hf(ids, output_hidden_states=True).hidden_states
        for layer in range(4):
            ours = toy.activations(prompts, f"blocks.{layer}.hook_resid_pre")[i, : ids.shape[1]]
            torch.testing.assert_close(ours, hs[layer][0], atol=1e-5, rtol=0)


def test_padding_is_invisible_in_prompt_indexing(toy):
    long, short = "mira is a kind honest old sailor . mira says :", "ada says :"
    both = toy.activations([long, short], "blocks.2.hook_resid_pre")
    alone = toy.activations([short], "blocks.2.hook_resid_pre")
    n = alone.shape[1]
    torch.testing.assert_close(both[1, :n], alone[0], atol=1e-5, rtol=0)
    assert both[1, n:].abs().max() == 0  # past the prompt's end is zero, not padding activations


def test_features_are_the_sae_encoding_of_the_site(toy):
    feats = toy.features(["mira says : \" ahoy"])
    acts = toy.activations(["mira says : \" ahoy"], toy.sae_site)
    torch.testing.assert_close(feats, toy.sae.encode(acts))
    assert feats.shape[-1] == toy.d_sae
    assert ((feats > 0).sum(-1) <= toy.sae.cfg.k).all()


def test_generation_is_reproducible_by_seed(toy):
    prompts = ["mira is a kind honest old sailor . mira says :"] * 2
    a = toy.generate(prompts, 20, seed=1)
    b = toy.generate(prompts, 20, seed=1)
    c = toy.generate(prompts, 20, seed=2)
    assert torch.equal(a.tokens, b.tokens) and a.text == b.text
    assert torch.equal(a.tokens[0], a.tokens[1])  # same prompt, same noise: same tokens
    assert not torch.equal(a.tokens, c.tokens)


def test_greedy_generation_matches_hf_argmax(toy):
    prompt = "mira is a kind honest old sailor . mira says :"
    ids = toy.tokenizer(prompt, return_tensors="pt").input_ids
    out = toy.generate([prompt], 8, temperature=0.0)
    hf = toy.model._module
    with torch.no_grad():
        for _ in range(8):
            ids = torch.cat([ids, hf(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert out.tokens[0].tolist() == ids[0, -8:].tolist()


@pytest.mark.parametrize("bad, match", [
    (lambda s: s.activations([], "blocks.0.hook_resid_pre"), "prompt list is empty"),
    (lambda s: s.activations(["mira"], "blocks.9.hook_resid_pre"), "unknown site 'blocks.9.hook_resid_pre'"),
    (lambda s: s.generate(["mira"], 0), "max_new_tokens=0 must be a positive integer"),
])
def test_bad_input_names_the_value(toy, bad, match):
    with pytest.raises((InputError, SiteError), match=match):
        bad(toy)


def test_loading_local_directories_takes_the_hub_code_path():
    import gremlinkit
    from gremlinkit.zoo import registry

    plain = gremlinkit.load(str(registry.path("toy-base")))  # a directory, not a zoo name: no default SAE
    assert plain.sae is None and plain.model.config.model_type == "gpt2"
    with_dir_sae = gremlinkit.load(str(registry.path("toy-base")), sae=str(registry.path("toy-base-sae")))
    assert with_dir_sae.sae_site == "blocks.2.hook_resid_pre" and with_dir_sae.d_sae == 384
    named = gremlinkit.load("toy-base", sae="toy-base-sae")
    torch.testing.assert_close(named.sae.W_dec, with_dir_sae.sae.W_dec)


def test_a_release_pair_goes_to_sae_lens_pretrained_directory():
    import gremlinkit
    from gremlinkit.errors import HubError

    # sae_lens validates the release against its directory before any download.
    with pytest.raises(HubError, match=r"SAE 'blocks.0.hook_resid_pre' of release 'no-such-release' through "
                                       r"sae_lens's registry.*no-such-release.*sae='DIR'"):
        gremlinkit.load("toy-base", sae=("no-such-release", "blocks.0.hook_resid_pre"))


def test_without_the_hub_a_hub_id_names_what_was_tried_and_the_local_way(tmp_path):
    """As a user on an offline machine meets it: the CLI, a real hub id and a real SAELens release."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}  # nothing cached, nothing fetched
    code = ("import gremlinkit\n"
            "for args in (('openai-community/gpt2', {}), ('toy-base', {'sae': ('gpt2-small-res-jb', "
            "'blocks.0.hook_resid_pre')})):\n"
            "    try:\n"
            "        gremlinkit.load(args[0], device='cpu', **args[1])\n"
            "    except gremlinkit.GremlinkitError as err:\n"
            "        print(type(err).__name__, err)\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    model, sae = done.stdout.strip().splitlines()[-2:]
    assert model.startswith("HubError could not load model 'openai-community/gpt2'")
    assert "Tried https://huggingface.co/openai-community/gpt2 and the hub cache" in model
    assert "gremlinkit.load('DIR')" in model
    assert sae.startswith("HubError could not load SAE 'blocks.0.hook_resid_pre' of release 'gpt2-small-res-jb'")
    assert ".save_model('DIR')" in sae and "sae='DIR'" in sae


def test_prompt_mask_marks_each_prompts_own_tokens(toy):
    batch = toy.batch(["mira is a kind", "ada"])
    assert batch.prompt_mask().tolist() == [[True] * 5, [True, True, False, False, False]]
    assert batch.prompt_mask(skip_bos=True)[:, 0].tolist() == [False, False]


def test_loading_an_sae_object_in_another_dtype_copies_it():
    """`load_sae` never changes a caller's SAE: a dtype change gives a copy."""
    from sae_lens import SAE

    from gremlinkit.subject import load_sae

    sae = SAE.load_from_disk(registry.path("toy-base-sae"))
    before = sae.W_enc.detach().clone()
    half = load_sae(sae, dtype=torch.bfloat16)
    assert half is not sae and half.W_enc.dtype == torch.bfloat16
    assert sae.W_enc.dtype == torch.float32 and torch.equal(sae.W_enc, before)
    assert load_sae(sae) is sae and load_sae(sae, dtype=torch.float32) is sae  # nothing to change: the same object


def test_zoo_names_resolve_through_the_provider_entry_point(tmp_path):
    """The core finds the zoo only through the package's entry points; a name no provider knows is
    left to nnsight (a local directory or a hub id)."""
    from gremlinkit import providers

    assert [type(p).__name__ for p in providers.providers()] == ["ZooProvider"]
    entry = providers.find("toy-rl")
    assert entry.path == registry.path("toy-rl") and entry.default_sae == "toy-base-sae" and entry.world == "persona"
    assert providers.find("gpt2") is None and providers.find(str(tmp_path)) is None
    assert set(providers.worlds()) == {"persona"}


def _sae_with_context(tmp_path, context):
    """The gpt2-like model's SAE, saved with ``context_size`` in its sae_lens metadata."""
    from sae_lens import SAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    path = tmp_path / f"sae-context-{context}"
    meta = SAEMetadata(hook_name="blocks.1.hook_resid_pre", prepend_bos=True, context_size=context)
    SAE.from_dict(StandardSAEConfig(d_in=32, d_sae=64, metadata=meta).to_dict()).save_model(path)
    return path


def test_an_sae_warns_once_when_a_read_passes_its_training_context(gpt2_like, tmp_path):
    import warnings

    model, _ = gpt2_like
    short = "The old sailor looked at the sea."
    plain = gremlinkit.load(model, device="cpu", bos=True)
    width, longer = (plain.batch([t]).input_ids.shape[1] for t in (short, short + " " + short))
    subject = gremlinkit.load(model, sae=_sae_with_context(tmp_path, width), device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        subject.features([short])  # exactly the SAE's context: no warning
    with pytest.warns(UserWarning, match=rf"a read of {longer} tokens passes the SAE's training context of {width}"):
        subject.features([short + " " + short])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per SAE
        subject.features([short + " " + short])
        subject.generate([short], 4)
    roomy = gremlinkit.load(model, sae=_sae_with_context(tmp_path, 64), device="cpu")  # the negative control
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        roomy.features([short + " " + short])
    fresh = gremlinkit.load(model, sae=_sae_with_context(tmp_path, width), device="cpu")
    with pytest.warns(UserWarning, match=rf"a generation of {width + 4} tokens passes"):
        fresh.generate([short], 4)


def test_an_sae_context_size_of_zero_is_refused(gpt2_like, tmp_path):
    with pytest.raises(SiteError, match=r"context_size=0: it must be a positive number of tokens"):
        gremlinkit.load(gpt2_like[0], sae=_sae_with_context(tmp_path, 0), device="cpu")


def test_an_sae_trained_on_a_processed_model_warns_naming_what_is_not_applied(gpt2_like, tmp_path):
    """model_from_pretrained_kwargs that rewrite TransformerLens's weights (so the activations)
    cannot be applied to the checkpoint's own activations: named at load. Placement, processing
    turned off and the BOS (read from prepend_bos) change nothing: silent (the negative control)."""
    import warnings

    from sae_lens import SAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    model, _ = gpt2_like

    def sae_with(kwargs):
        path = tmp_path / f"sae-{len(list(tmp_path.iterdir()))}"
        meta = SAEMetadata(hook_name="blocks.1.hook_resid_pre", prepend_bos=True, model_from_pretrained_kwargs=kwargs)
        SAE.from_dict(StandardSAEConfig(d_in=32, d_sae=64, metadata=meta).to_dict()).save_model(path)
        return path

    processed = sae_with({"center_writing_weights": True, "fold_ln": False, "dtype": "float32"})
    with pytest.warns(UserWarning, match=r"loaded with \{'center_writing_weights': True\}.*own activations at "
                                         r"'blocks.1.hook_resid_pre'"):
        gremlinkit.load(model, sae=processed, device="cpu")
    plain = sae_with({"center_writing_weights": False, "fold_ln": False, "dtype": "float32",
                      "default_prepend_bos": True})
    with warnings.catch_warnings(record=True) as seen:  # sae_lens itself warns of any such kwargs
        warnings.simplefilter("always")
        gremlinkit.load(model, sae=plain, device="cpu")
    assert not [w for w in seen if "trained on a model loaded with" in str(w.message)]
