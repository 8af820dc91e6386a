"""Interactive exploration: the analyses behind notebook 05's three widgets.

* **Feature explorer.** Where does one SAE feature fire, and what does it do? Its top-activating
  held-out contexts (a token heatmap of the feature's activation around each peak), the
  distribution of its non-zero activations, and its *logit effects*: the mean change in
  next-token log-probability when the feature is ablated at each peak, so a token the feature
  promotes loses probability without it. These are causal effects through the rest of the model,
  not a linear read of the decoder through the unembedding.
* **Steering playground.** Add ``coefficient`` times a trait vector (the difference of means over
  matched prompt pairs, :func:`personas.trait_vector`) at one site, and sample beside a paired
  baseline: the same Gumbel noise per sample, so the two texts differ only by the steer. At
  coefficient 0 they are identical.
* **Scan viewer.** One feature's mean persistence curve (edited minus baseline, by lag) across
  models and modes, from a :mod:`persistence` scan, with its fitted half-lives.

The widgets in ``widgets/`` hold a selection and call these functions; the notebook calls the same
functions for its recorded metrics, so what a tester checks is what a user sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from gremlinkit import interventions as iv
from gremlinkit import worlds
from gremlinkit.errors import InputError
from gremlinkit.experiments import persistence
from gremlinkit.params import Placement, check_range
from gremlinkit.prompts import encode
from gremlinkit.results import to_numpy


COEFFICIENT_LIMIT = 8.0  # steering further than this only produces noise on the zoo models


@dataclass(frozen=True)
class ExploreConfig(Placement):
    model: str = "toy-base"  # model the feature explorer and the steering playground open on
    sae: str = "auto"  # SAE whose features are explored: "auto" (the model's own) or a name
    world: str = "auto"  # "auto" (the model's), "persona", "english" or a pairs file
    feature: int = -1  # feature shown first; -1 picks the most frequently firing one
    n_docs: int = 60  # held-out documents the feature explorer searches
    contexts: int = 8  # top-activating contexts shown, at most one per document
    window: int = 6  # tokens shown each side of a context's peak
    trait: str = ""  # trait vector steered along ("": the world's first; the zoo's: persona, register, age)
    steer_site: str = "auto"  # where the trait vector is added ("auto": a third of the way up)
    coefficient: float = 3.0  # steering coefficient the playground opens at
    prompt: str = ""  # steered prompt ("": the world's first generation prompt, else a held-out pair's opening)
    n_samples: int = 4  # paired samples per steering setting
    max_new_tokens: int = 32  # tokens generated per sample
    scan_models: list = field(default_factory=list)  # scan viewer models ([]: the model and its fine-tunes)
    scan_features: Any = "top-4"  # features scanned: "top-N", "random-N" or a list of ids
    scan_n_prompts: int = 8  # held-out documents per scanned feature
    scan_horizon: int = 16  # tokens followed after each edit
    seed: int = 0  # seeds the held-out documents, trait pairs, sampling noise and the scan
    output_dir: str = "output/05_explore"  # where the scan's chunks and the metrics go

    def __post_init__(self) -> None:
        check_range("feature", self.feature, -1, None)
        check_range("n_docs", self.n_docs, 1, 2000)
        check_range("contexts", self.contexts, 1, 64)
        check_range("window", self.window, 0, 32)
        check_range("coefficient", self.coefficient, -COEFFICIENT_LIMIT, COEFFICIENT_LIMIT)
        check_range("n_samples", self.n_samples, 1, 64)
        check_range("max_new_tokens", self.max_new_tokens, 1, 128)
        self.scan_config(self.scan_models or [self.model])  # checks the scan's own parameters

    @classmethod
    def smoke(cls) -> "ExploreConfig":
        return cls(n_docs=20, contexts=4, n_samples=2, max_new_tokens=16, scan_models=["toy-base", "toy-rl"],
                   scan_features="top-2", scan_n_prompts=4, scan_horizon=8)

    def make_world(self) -> worlds.World:
        world = worlds.resolve(self.world, self.model, seed=self.seed)
        if self.trait:
            world.check_traits([self.trait])
        return world

    def studied(self, world: worlds.World) -> str:
        return self.trait or world.traits[0]

    def site(self, subject) -> str:
        """``steer_site``, or a third of the way up the residual stream ("auto")."""
        if self.steer_site != "auto":
            return self.steer_site
        return f"blocks.{subject.site_map.n_layers // 3}.hook_resid_post"

    def sae_name(self) -> str:
        """``sae``, or the model's own SAE when ``sae="auto"``."""
        return self.scan_config([self.model]).sae_name()

    def scanned(self) -> list[str]:
        """The scan viewer's models: ``scan_models``, else the model and its provider's fine-tunes of it."""
        if self.scan_models:
            return list(self.scan_models)
        from gremlinkit import providers

        entry = providers.find(self.model)
        return list(entry.family) if entry is not None and entry.family else [self.model]

    def scan_config(self, models: list[str] | None = None) -> persistence.PersistenceConfig:
        """The persistence scan the scan viewer shows (on `scanned` unless ``models`` are given):
        on-policy and teacher-forced ablations."""
        models = models or self.scanned()
        return persistence.PersistenceConfig(
            model=models[0], models=list(models[1:]), sae=self.sae, world=self.world, features=self.scan_features,
            intervention="ablate", positions=["sentence_end:16"], horizon=self.scan_horizon,
            n_prompts=self.scan_n_prompts, n_bootstrap=50, seed=self.seed,
            output_dir=str(Path(self.output_dir) / "scan"), device=self.device, dtype=self.dtype)


# --------------------------------------------------------------------------- feature explorer


@dataclass
class FeatureIndex:
    """Held-out documents with the SAE's features at every real token: what the explorer searches."""

    docs: list[np.ndarray]  # token ids per document (BOS first where the subject reads one)
    labels: pd.DataFrame  # one row per real token (no BOS): doc, pos, token (as text)
    feats: torch.Tensor  # (N, d_sae), row-aligned with labels

    @property
    def d_sae(self) -> int:
        return int(self.feats.shape[1])

    def check_feature(self, feature: int) -> int:
        if not isinstance(feature, (int, np.integer)) or not 0 <= feature < self.d_sae:
            raise InputError(f"feature {feature!r} is out of range: this SAE has {self.d_sae} features "
                             f"(0..{self.d_sae - 1})")
        return int(feature)

    def frequencies(self) -> pd.DataFrame:
        """Features that fire at least once, the most frequent first: feature, frequency."""
        freq = to_numpy((self.feats > 0).float().mean(0))
        live = np.flatnonzero(freq > 0)
        order = live[np.lexsort((live, -freq[live]))]
        return pd.DataFrame({"feature": order, "frequency": freq[order]})


def index_features(subject, world: worlds.World, n_docs: int, seed: int) -> FeatureIndex:
    """The world's held-out documents (seeds from 10,000: the zoo trains on 0, 1 and 100, fine-tunes
    from 50,000) with their SAE features at every real token."""
    docs = [encode(t, subject.tokenizer, subject.prepends_bos) for t in world.documents(n_docs, 10_000 + seed)]
    keep = subject.batch(docs).prompt_mask(skip_bos=True)  # row-major: doc by doc, as the labels are
    start = int(subject.prepends_bos)
    labels = pd.DataFrame([{"doc": d, "pos": p, "token": subject.tokenizer.decode([t])}
                           for d, ids in enumerate(docs) for p, t in enumerate(ids) if p >= start])
    feats = torch.cat([subject.features(docs[i:i + 16])[keep[i:i + 16, : max(map(len, docs[i:i + 16]))]]
                       for i in range(0, len(docs), 16)])  # 16 documents at a time: (N, d_sae)
    return FeatureIndex([np.asarray(d) for d in docs], labels, feats)


def feature_contexts(index: FeatureIndex, feature: int, k: int, window: int) -> pd.DataFrame:
    """The ``k`` strongest activations of ``feature``, one per story, with ``window`` tokens each side.

    Tidy: context (0 is the strongest), doc, peak_pos, offset, token, activation.
    """
    f = index.check_feature(feature)
    acts = to_numpy(index.feats[:, f])
    lab = index.labels.assign(activation=acts)
    firing = lab[lab.activation > 0].sort_values(["activation", "doc", "pos"], ascending=[False, True, True])
    peaks = firing.drop_duplicates("doc").head(k)
    rows = []
    for c, peak in enumerate(peaks.itertuples()):
        near = lab[(lab.doc == peak.doc) & (lab.pos - peak.pos).abs().le(window)]
        rows += [{"context": c, "doc": int(peak.doc), "peak_pos": int(peak.pos), "offset": int(t.pos - peak.pos),
                  "token": t.token, "activation": float(t.activation)} for t in near.itertuples()]
    return pd.DataFrame(rows, columns=["context", "doc", "peak_pos", "offset", "token", "activation"])


def activation_values(index: FeatureIndex, feature: int) -> pd.DataFrame:
    """The feature's non-zero activations over the held-out tokens: token, activation."""
    f = index.check_feature(feature)
    acts = to_numpy(index.feats[:, f])
    on = acts > 0
    return pd.DataFrame({"token": index.labels.token.to_numpy()[on], "activation": acts[on]})


@torch.no_grad()
def logit_effects(subject, index: FeatureIndex, contexts: pd.DataFrame, feature: int, top: int = 8
                  ) -> pd.DataFrame:
    """Mean change in next-token log-prob at each context's peak when ``feature`` is ablated there.

    ``effect`` is log p(token) with the feature minus without it, averaged over contexts: positive
    for tokens the feature promotes. Tidy: token, effect, direction ("promotes" or "suppresses").
    """
    f = index.check_feature(feature)
    peaks = contexts.drop_duplicates("context")
    if peaks.empty:
        return pd.DataFrame(columns=["token", "effect", "direction"])
    prompts = [torch.as_tensor(index.docs[d][: p + 1]) for d, p in zip(peaks.doc, peaks.peak_pos)]
    last = subject.batch(prompts).lengths - 1
    rows = torch.arange(len(prompts), device=last.device)
    base = torch.log_softmax(subject.run(prompts)[rows, last], -1)  # (K, V)
    ablated = torch.log_softmax(subject.run(prompts, [iv.ablate(f, pos=-1)])[rows, last], -1)
    effect = (base - ablated).mean(0)  # (V,)
    out = []
    for direction, ids in (("promotes", effect.topk(top).indices), ("suppresses", (-effect).topk(top).indices)):
        out += [{"token": subject.tokenizer.convert_ids_to_tokens(int(i)), "effect": float(effect[i]),
                 "direction": direction} for i in ids]
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- steering playground


def check_prompt(subject, prompt: str) -> str:
    """The prompt, if it is not empty and the tokenizer knows every word (a word-level vocabulary,
    such as the zoo's, maps unknown words to its unknown token)."""
    if not prompt.strip():
        raise InputError("the prompt is empty: write a few words")
    ids = subject.tokenizer(prompt).input_ids
    unk = subject.tokenizer.unk_token_id
    if unk is not None and unk in ids:
        words = [w for w in prompt.split() if subject.tokenizer.convert_tokens_to_ids(w) == unk]
        raise InputError(f"prompt words {words} are not in the model's vocabulary of "
                         f"{len(subject.tokenizer)} tokens")
    return prompt


def default_prompt(world: worlds.World, prompt: str, trait: str) -> tuple[str, list[str]]:
    """The steered prompt: ``prompt``, else the world's first generation prompt, else (a world with
    none) the opening words of ``trait``'s first held-out pair, without its last word, which the
    pair varies. Returns (prompt, what was skipped: empty unless the world had no prompts)."""
    if prompt or world.generation:
        return prompt or world.prompts(1)[0], []
    pair = world.pole_prompts(trait, 1, 0)["positive"][0]
    words = pair.split()
    return " ".join(words[: max(1, len(words) - 2)]), [
        f"the world's generation prompts: the {world.name} world has none, so steering starts from the opening "
        f"of a held-out {trait} pair"]


def check_coefficient(coefficient: float) -> float:
    if not -COEFFICIENT_LIMIT <= coefficient <= COEFFICIENT_LIMIT:
        raise InputError(f"coefficient {coefficient!r} is out of range: valid range is "
                         f"[{-COEFFICIENT_LIMIT}, {COEFFICIENT_LIMIT}]")
    return float(coefficient)


def steer_samples(subject, world: worlds.World, trait: str, prompt: str, vector: np.ndarray, coefficient: float,
                  site: str, n_samples: int, max_new_tokens: int, seed: int) -> pd.DataFrame:
    """``n_samples`` paired samples, baseline and steered, in one batched generation.

    Tidy: sample, condition ("baseline" or "steered"), coefficient, text, negative_rate and
    positive_rate (the share of words from each pole's lexicon of ``trait`` in ``world``).
    Sample ``i`` uses the same noise in both conditions, so at coefficient 0 the texts are equal.
    """
    check_coefficient(coefficient)
    check_prompt(subject, prompt)
    steer = [iv.steer(torch.as_tensor(vector, dtype=torch.float32), coefficient, site,
                      rows=list(range(n_samples, 2 * n_samples)))] if coefficient else []
    seeds = [seed * 7919 + i for i in range(n_samples)] * 2  # paired: sample i, both conditions
    gen = subject.generate([prompt] * (2 * n_samples), max_new_tokens, steer, seed=seeds)
    rows = []
    for r, text in enumerate(gen.text):
        rates = world.lexicon_rates(trait, text)
        rows.append({"sample": r % n_samples, "condition": "steered" if r >= n_samples else "baseline",
                     "coefficient": float(coefficient), "text": text, "negative_rate": rates["negative_rate"],
                     "positive_rate": rates["positive_rate"]})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- scan viewer


def feature_curves(scan: pd.DataFrame, feature: int) -> pd.DataFrame:
    """Mean and standard error of ``feature``'s delta by lag: model, mode, lag, delta, sem, n."""
    own = persistence.own_feature_rows(scan)
    own = own[own.feature == feature]
    if own.empty:
        raise InputError(f"feature {feature} is not in this scan; scanned features: "
                         f"{sorted(scan.feature.unique().tolist())}")
    g = own.groupby(["model", "mode", "lag"], as_index=False).delta
    out = g.agg(delta="mean", sem="sem", n="size")
    return out.assign(sem=out["sem"].fillna(0.0))


# --------------------------------------------------------------------------- recorded metrics


def metrics(contexts: pd.DataFrame, values: pd.DataFrame, effects: pd.DataFrame, samples: pd.DataFrame,
            curves: pd.DataFrame, n_tokens: int) -> dict[str, float]:
    steered = samples[samples.condition == "steered"].set_index("sample")
    base = samples[samples.condition == "baseline"].set_index("sample")
    after = curves[curves.lag >= 1]
    return {
        "top_activation": float(contexts.activation.max()),
        "fraction_active": len(values) / n_tokens,
        "contexts_shown": float(contexts.context.nunique()),
        "top_promoted_effect": float(effects[effects.direction == "promotes"].effect.max()),
        "baseline_positive_rate": float(base.positive_rate.mean()),
        "steered_positive_rate": float(steered.positive_rate.mean()),
        "steered_samples_changed": float((steered.text != base.text).mean()),
        "scan_curves": float(curves.groupby(["model", "mode"]).ngroups),
        "scan_teacher_forced_max_abs_delta": float(after[after["mode"] == "teacher_forced"].delta.abs().max()),
    }
