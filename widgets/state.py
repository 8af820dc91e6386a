"""Plain state objects behind the widgets: a selection, cached results, and charts.

Nothing here imports ipywidgets, so pytest drives these objects directly. Each one holds what
the user picked, recomputes through ``gremlinkit.experiments.explore`` when the pick changes,
and returns the same altair charts the notebooks draw. Views (``widgets.views``) only bind
controls to these attributes and re-display.
"""

from __future__ import annotations

from typing import Callable

import altair as alt
import pandas as pd

import gremlinkit
from gremlinkit import plots, worlds
from gremlinkit.errors import InputError
from gremlinkit.experiments import explore, personas
from gremlinkit.experiments.explore import ExploreConfig


class SubjectCache:
    """Loaded subjects by (model, SAE, device, dtype), so that the explorer switches between them
    without reloading; ``clear()`` lets them go (and frees their memory once nothing else holds them)."""

    def __init__(self, load: Callable[..., object] = gremlinkit.load):
        self._load, self._subjects = load, {}

    def get(self, model: str, sae: str, device: str | None = None, dtype: str | None = None):
        key = (model, sae, device, dtype)
        if key not in self._subjects:
            self._subjects[key] = self._load(model, sae=sae, device=device, dtype=dtype)
        return self._subjects[key]

    def __len__(self) -> int:
        return len(self._subjects)

    def clear(self) -> None:
        self._subjects.clear()


SUBJECTS = SubjectCache()  # the widgets' shared cache: `widgets.state.SUBJECTS.clear()` frees every model


def _load(model: str, sae: str, device: str | None = None, dtype: str | None = None):
    return SUBJECTS.get(model, sae, device, dtype)


def scan_subjects(cfg) -> dict:
    """The subjects of a persistence scan (``cfg``: a `PersistenceConfig`) from the widgets' cache,
    so the scan viewer reuses the models the explorer already holds instead of loading them twice."""
    return {m: _load(m, cfg.sae_name(), **cfg.load_kwargs()) for m in cfg.scanned}


def _pick(name: str, value: str, options: list[str]) -> str:
    if value not in options:
        raise InputError(f"{name} {value!r} is not one of {options}")
    return value


class FeatureExplorerState:
    """A model, an SAE and a feature; its contexts, activation histogram and logit effects."""

    def __init__(self, cfg: ExploreConfig, models: list[str], saes: list[str],
                 loader: Callable[[str, str], object] | None = None):
        self.cfg, self.models, self.saes = cfg, list(models), list(saes)
        self._loader = loader or (lambda model, sae: _load(model, sae, **cfg.load_kwargs()))
        self.model = _pick("model", cfg.model, self.models)
        self.sae = _pick("sae", cfg.sae_name(), self.saes)
        self._indexes: dict[tuple[str, str], explore.FeatureIndex] = {}
        self.feature = cfg.feature if cfg.feature >= 0 else self.live_features()[0]
        self.index.check_feature(self.feature)

    @property
    def subject(self):
        return self._loader(self.model, self.sae)

    @property
    def index(self) -> explore.FeatureIndex:
        key = (self.model, self.sae)
        if key not in self._indexes:
            world = worlds.resolve(self.cfg.world, self.model, seed=self.cfg.seed)
            self._indexes[key] = explore.index_features(self.subject, world, self.cfg.n_docs, self.cfg.seed)
        return self._indexes[key]

    def live_features(self) -> list[int]:
        """Features that fire on the held-out stories, the most frequent first."""
        return self.index.frequencies().feature.tolist()

    def select(self, *, model: str | None = None, sae: str | None = None, feature: int | None = None) -> None:
        """Change any of the three picks; a bad pick raises and leaves the state as it was."""
        new_model = _pick("model", model, self.models) if model is not None else self.model
        new_sae = _pick("sae", sae, self.saes) if sae is not None else self.sae
        old = (self.model, self.sae)
        self.model, self.sae = new_model, new_sae
        try:
            if feature is not None:
                self.feature = self.index.check_feature(feature)
        except InputError:
            self.model, self.sae = old
            raise

    def contexts(self) -> pd.DataFrame:
        return explore.feature_contexts(self.index, self.feature, self.cfg.contexts, self.cfg.window)

    def values(self) -> pd.DataFrame:
        return explore.activation_values(self.index, self.feature)

    def effects(self) -> pd.DataFrame:
        return explore.logit_effects(self.subject, self.index, self.contexts(), self.feature)

    def charts(self) -> dict[str, alt.Chart]:
        f = self.feature
        return {
            "contexts": plots.token_heatmap(self.contexts(), title=f"Feature {f}: top-activating contexts"),
            "histogram": plots.activation_histogram(self.values(), title=f"Feature {f}: non-zero activations"),
            "effects": plots.logit_effect_bars(self.effects(), title=f"Feature {f}: logit effects"),
        }


class SteeringState:
    """A trait vector, a coefficient and a prompt; paired baseline and steered samples."""

    limit = explore.COEFFICIENT_LIMIT

    def __init__(self, cfg: ExploreConfig, subject=None):
        self.cfg = cfg
        self.subject = subject if subject is not None else _load(cfg.model, cfg.sae_name(), **cfg.load_kwargs())
        self.world = cfg.make_world()
        self.traits = self.world.traits
        self.site = cfg.site(self.subject)
        self.trait, self.coefficient = cfg.studied(self.world), float(cfg.coefficient)
        prompt, self.skipped = explore.default_prompt(self.world, cfg.prompt, self.trait)
        self.prompt = explore.check_prompt(self.subject, prompt)
        self._vectors: dict[str, object] = {}
        self._samples: dict[tuple, pd.DataFrame] = {}

    def select(self, *, trait: str | None = None, coefficient: float | None = None,
               prompt: str | None = None) -> None:
        """Change the trait, coefficient or prompt; a bad value raises and changes nothing."""
        if trait is not None:
            _pick("trait", trait, self.traits)
        if coefficient is not None:
            explore.check_coefficient(coefficient)
        if prompt is not None:
            explore.check_prompt(self.subject, prompt)
        self.trait = trait if trait is not None else self.trait
        self.coefficient = float(coefficient) if coefficient is not None else self.coefficient
        self.prompt = prompt if prompt is not None else self.prompt

    @property
    def poles(self) -> tuple[str, str]:
        """(negative, positive) pole of the trait: a positive coefficient steers toward the second."""
        return self.world.pole_labels(self.trait)

    def vector(self):
        if self.trait not in self._vectors:
            self._vectors[self.trait] = personas.trait_vector(self.subject, self.trait, self.site, self.cfg.seed,
                                                              world=self.world)
        return self._vectors[self.trait]

    def samples(self) -> pd.DataFrame:
        """Paired samples at the current setting (cached: moving back to a setting is instant)."""
        key = (self.trait, self.coefficient, self.prompt)
        if key not in self._samples:
            cfg = self.cfg
            self._samples[key] = explore.steer_samples(self.subject, self.world, self.trait, self.prompt, self.vector(),
                                                       self.coefficient, self.site, cfg.n_samples, cfg.max_new_tokens,
                                                       cfg.seed)
        return self._samples[key]

    def texts(self, condition: str) -> list[str]:
        s = self.samples()
        return s[s.condition == _pick("condition", condition, ["baseline", "steered"])].text.tolist()

    def chart(self) -> alt.Chart:
        low, high = self.poles
        return plots.steering_rates(self.samples(), poles=(low, high),
                                    title=f"{self.trait} ({low} -> {high}) x {self.coefficient:g}")


class ScanViewerState:
    """One scanned feature at a time: its decay curves across models and modes, and half-lives."""

    def __init__(self, scan: pd.DataFrame, summary: pd.DataFrame, feature: int | None = None):
        if scan.empty:
            raise InputError("the scan has no rows: run persistence.run first")
        self.scan, self.summary = scan, summary
        self.features = sorted(int(f) for f in scan.feature.unique())
        self.feature = self.features[0]
        if feature is not None:
            self.select(feature)

    def select(self, feature: int) -> None:
        if feature not in self.features:
            raise InputError(f"feature {feature!r} was not scanned; scanned features: {self.features}")
        self.feature = int(feature)

    def curves(self) -> pd.DataFrame:
        return explore.feature_curves(self.scan, self.feature)

    def half_lives(self) -> pd.DataFrame:
        cols = ["model", "mode", "half_life", "half_life_low", "half_life_high", "persistent"]
        return self.summary[self.summary.feature == self.feature][cols].reset_index(drop=True)

    def chart(self) -> alt.Chart:
        return plots.feature_decay(self.curves(), title=f"Feature {self.feature}: edited minus baseline, by lag")
