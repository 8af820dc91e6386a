"""Experiment configs reject bad parameters with a message that names them."""

import pytest

from gremlinkit.errors import ConfigError, GremlinkitError
from gremlinkit.experiments.zoo_tour import ZooTourConfig
from gremlinkit.params import Scope, from_params


def test_defaults_and_smoke_are_valid_configs():
    assert from_params(ZooTourConfig, {}) == ZooTourConfig()
    assert ZooTourConfig.smoke().n_docs < ZooTourConfig().n_docs


def test_unknown_parameter_is_named():
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['n_promts'\]"):
        from_params(ZooTourConfig, {"n_promts": 3})


def test_wrong_type_is_named_with_the_expected_type():
    with pytest.raises(ConfigError, match=r"n_prompts='3' has type str; ZooTourConfig.n_prompts takes int"):
        from_params(ZooTourConfig, {"n_prompts": "3"})
    with pytest.raises(ConfigError, match="takes int"):
        from_params(ZooTourConfig, {"n_prompts": True})  # a bool is not a count


def test_int_is_accepted_where_a_float_is_expected():
    assert from_params(ZooTourConfig, {"temperature": 0}).temperature == 0


def test_out_of_range_names_the_valid_range():
    with pytest.raises(ConfigError, match=r"n_prompts=0 is out of range: valid range is \[1, 256\]"):
        ZooTourConfig(n_prompts=0)


def test_errors_share_one_root():
    assert issubclass(ConfigError, GremlinkitError)


def test_scope_sees_only_names_defined_after_it_and_requires_all():
    ns = {"imported": 1}
    scope = Scope(ns)
    ns.update(n_prompts=2, _ipython_private=3)
    with pytest.raises(ConfigError, match="missing from the parameters cell"):
        scope.config(ZooTourConfig)
    ns.update({f: getattr(ZooTourConfig(), f) for f in ZooTourConfig.__dataclass_fields__ if f != "n_prompts"})
    assert scope.config(ZooTourConfig).n_prompts == 2
    ns["typo_param"] = 1
    with pytest.raises(ConfigError, match="typo_param"):
        scope.config(ZooTourConfig)


def test_device_and_dtype_parameters_reach_load_and_are_checked():
    assert ZooTourConfig().load_kwargs() == {"device": None, "dtype": None}  # auto: CUDA if any; own dtype
    assert ZooTourConfig(device="cpu", dtype="bfloat16").load_kwargs() == {"device": "cpu", "dtype": "bfloat16"}
    with pytest.raises(ConfigError, match=r"dtype='half' is not one of \['auto', 'float32', 'bfloat16', 'float16'\]"):
        ZooTourConfig(dtype="half").load_kwargs()
    with pytest.raises(ConfigError, match=r"device='gpu' is not a device"):
        ZooTourConfig(device="gpu").load_kwargs()


def test_a_notebook_config_loads_in_the_dtype_it_names():
    import gremlinkit

    subject = gremlinkit.load("toy-base", **ZooTourConfig(device="cpu", dtype="bfloat16").load_kwargs())
    assert subject.dtype.__str__() == "torch.bfloat16" and subject.device.type == "cpu"


def test_auto_parameters_take_the_models_recommended_settings():
    """"auto" means what the model's provider recommends (smollm2: bf16, MLP and SAE units, chunks of
    32, so its default runs fit 1.5 GB; the references run it at "auto"), else the old defaults;
    an explicit value always wins."""
    from gremlinkit.experiments import persistence, signflip
    from gremlinkit.zoo.registry import REAL_SETTINGS

    real = signflip.SignFlipConfig(model="smollm2-135m")
    assert real.load_kwargs()["dtype"] == REAL_SETTINGS["dtype"] == "bfloat16"
    assert real.kinds == ["mlp", "sae"]
    assert persistence.PersistenceConfig(model="smollm2-135m").chunk == 32
    toy = signflip.SignFlipConfig()
    assert toy.load_kwargs()["dtype"] is None and toy.kinds == list(signflip.UNIT_KINDS)  # the checkpoint's own
    assert persistence.PersistenceConfig().chunk == 256
    hub = persistence.PersistenceConfig(model="org/name")  # no provider knows it
    assert hub.chunk == 256 and hub.load_kwargs()["dtype"] is None
    explicit = signflip.SignFlipConfig(model="smollm2-135m", dtype="float32", unit_kinds=["direction"])
    assert explicit.load_kwargs()["dtype"] == "float32" and explicit.kinds == ["direction"]
    assert persistence.PersistenceConfig(model="smollm2-135m", chunk_size=8).chunk == 8
    # "auto" and the size it resolves to are one scan: a resume across them finds its units
    assert persistence.PersistenceConfig(model="smollm2-135m").scan_key() == \
        persistence.PersistenceConfig(model="smollm2-135m", chunk_size=32).scan_key()
    with pytest.raises(ConfigError, match=r"unit_kinds=\['residual'\]: 'auto', or a list"):
        signflip.SignFlipConfig(unit_kinds=["residual"])
    with pytest.raises(ConfigError, match=r"chunk_size=0 is out of range"):
        persistence.PersistenceConfig(chunk_size=0)
