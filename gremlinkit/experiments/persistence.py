"""Persistence scans: the gremlin test.

A "gremlin" is a circuit that up-weights tokens which give *itself* more influence later. The
test: ablate or add an SAE feature at one token and follow that feature ``lag`` tokens later,
against a paired baseline. An ordinary feature's effect is gone within a few tokens; a gremlin's
persists, or grows. Two modes:

* ``teacher_forced``: the continuation is the held-out story itself, so the effect can travel
  only through the residual stream (attention to the edited position). Read at the site it was
  made at, such an edit cannot reach later positions at all: the residual entering layer L at
  position q depends only on layers below L. Its deltas at lags >= 1 are exactly zero: a null
  control that the tests check, not a persistence measurement.
* ``on_policy``: the model generates after the edit with paired Gumbel-max noise, so effects
  that travel through the tokens the model *chooses* count too. The hypothesis is about this mode.

**Readout.** Persistence is read from the feature's encoder *pre-activation* (the value before the
SAE's activation function or top-k cut, `gremlinkit.interventions.encode_pre`): it equals the
feature wherever the feature is on, and unlike the activation it does not read zero whenever the
feature falls under the top-k cut, so a small lasting surplus stays visible. The post-activation
deltas are kept beside it (``delta_post``). On-policy rows also say whether the edited continuation
``diverged`` from its paired baseline at all: an edit that changes no token cannot persist through
the tokens; ``token`` and ``intervened_token`` are what each run chose at every lag.

**Where.** An edit sits at a token index, at ``"sentence_end:N"`` (the first "." at or after token
N), or at ``"active:N"``: each feature at its own first firing in tokens N .. N + 31 of each story,
so that an ablation removes something (a story where the feature never fires there is left out).

**Behaviour** (:func:`behaviour`). The same edits read as behaviour: over lags 16-48, the change in
the feature's own prevalence and in the rate of given words among the chosen tokens.

**Summary rule, fixed in advance.** For each (model, mode, feature), ``c(lag)`` is the mean delta
over prompts and the edit's sign is the sign of ``c(0)``, its direct effect. The *tail* of a prompt
is its mean delta over lags ``H//4 .. H``, once the direct effect has passed. A feature is
**persistent** when its tail has the edit's own sign: a one-sided t-test over prompts in that
direction, its p-values corrected over every feature of the scan (per model and mode) by
Benjamini–Hochberg, ``q_value <= FDR_Q`` (0.05). A tail of the opposite sign is not persistence.

The half-life ``h`` comes from a least-squares fit of ``A * 2**(-lag / h)`` (`gremlinkit.stats.fit_half_life`)
to the tail when the tail is there (uncorrected one-sided p < 0.05), otherwise to ``c(0..H)`` (an
effect that dies out early has a short half-life); ``[half_life_low, half_life_high]`` is the
2.5-97.5% range over bootstrap resamples of prompts. A horizon of H tokens cannot measure a
half-life longer than H: such a fit is *censored*, reported as ``half_life = H`` with
``half_life_censored`` set ("at least H tokens"), never as a number beyond what was seen.

**Teacher-forced mode is a null control.** It reads the site it edits, so its deltas at lags >= 1
are exactly zero by construction; it checks causality, not persistence.

**Truth on the zoo.** The corpus switches topic with probability p = 0.2 before each sentence,
to one of the K - 1 = 5 other topics. Forcing a topic and comparing with a baseline, the expected
difference in topic occupancy decays by the chain's second eigenvalue, ``1 - p K / (K - 1)`` =
0.76 per sentence; with the corpus's mean sentence of 12.84 tokens that is a half-life of
``ln 2 / -ln 0.76 * 12.84`` = 32.4 tokens (:func:`expected_topic_half_life`). A topic feature
pushed on-policy at a sentence end (``positions=["sentence_end:24"]``: the first "." at or after
token 24), where the corpus chooses the next sentence's topic, should decay at that rate; a feature
tied to one-off tokens should not survive. At ``scale=32``, ``horizon=96`` and 128 prompts the
sea-topic feature of toy-base's SAE is found persistent with a half-life of 25-38 tokens over seeds.

**SAEs across models.** The SAE given in ``sae`` (default: toy-base's) is shared by every model
in one scan, so the same feature ids mean the same directions everywhere.

Scans are cut into units of ``chunk_size`` interventions (`Unit`), each one batched forward or
generation, run in this process or on Ray workers (`gremlinkit.workers`). Each unit is written
atomically to ``output_dir/scan-<config hash>/`` as soon as it is done, so an interrupted scan
resumes where it stopped; a unit's rows depend on its key alone, so the same seed always gives the
same DataFrame, whoever ran which unit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import false_discovery_control, ttest_1samp
from tqdm.auto import tqdm

from gremlinkit.prompts import encode, host_ids
from gremlinkit import interventions as iv
from gremlinkit.errors import ConfigError
from gremlinkit.stats import ATOL, half_life, half_life_interval, tail_start, tail_test
from gremlinkit.params import Placement, check_choice, check_range
from gremlinkit.results import Result, own_feature_rows, to_numpy

MODES = ("teacher_forced", "on_policy")
INTERVENTIONS = ("ablate", "mean_ablate", "add")
FDR_Q = 0.05  # Benjamini-Hochberg level over the features of one scan
TAIL_ALPHA = 0.05  # uncorrected level at which a tail is fitted instead of the whole curve
SCAN_VERSION = 3  # bumped when a chunk's columns change, so old chunks are not resumed into new scans
# delta: encoder pre-activation (the readout); *_post: the feature's activation after the SAE's cut;
# token, intervened_token: the token each run chose after reading the lag's position (-1 when teacher-forced)
COLUMNS = ["model", "feature", "prompt_id", "position", "mode", "lag", "baseline", "intervened", "delta",
           "baseline_post", "intervened_post", "delta_post", "diverged", "token", "intervened_token"]
BEHAVIOUR_WINDOW = (16, 48)  # lags at which the behavioural form of persistence is read
ACTIVE_WINDOW = 32  # "active:N" edits each feature at its first firing among tokens N .. N + 31
# Fields that say where and how a scan runs, not what it computes: left out of the scan's key, so a
# scan resumes across them. (chunk_size is in the key: it cuts the units, and each unit's batch.)
EXECUTION_FIELDS = ("backend", "workers", "address", "threads", "gpus_per_worker")


@dataclass(frozen=True)
class PersistenceConfig(Placement):
    model: str = "toy-base"  # zoo name, local model directory or hub id
    models: list = field(default_factory=list)  # more models scanned beside it, with its SAE and prompts
    sae: str = "auto"  # one SAE shared by every model; "auto": the model's own
    world: str = "auto"  # where the stories come from: "auto" (the model's), "persona", "english" or a pairs file
    features: Any = "top-8"  # "top-N" by firing frequency, "random-N", "live" (every live one) or a list of ids
    intervention: str = "add"  # "ablate" (to zero), "mean_ablate" (to its mean over the prompts' tokens) or "add"
    scale: float = 32.0  # added to the feature when intervention is "add"
    positions: list = field(default_factory=lambda: ["sentence_end:24"])  # ints, "sentence_end:N" or ["active:N"]
    horizon: int = 32  # tokens followed after the edit
    n_prompts: int = 32  # held-out stories
    mode: str = "both"  # "teacher_forced", "on_policy" or "both"
    record_all: bool = False  # also record every other feature, not only the edited one
    temperature: float = 1.0  # on-policy sampling temperature
    chunk_size: Any = "auto"  # interventions per batched forward and per file; "auto": the model's recommended, else 256
    n_bootstrap: int = 200  # bootstrap resamples of prompts for half-life intervals
    seed: int = 0  # seeds prompts, random features, sampling noise and the bootstrap
    output_dir: str = "output/03_persistence_scan"  # where chunks, tables and metrics go
    marker: str = ""  # a token put right after the BOS of every prompt (e.g. the no-RL marker); "": none

    def __post_init__(self) -> None:
        if not self.model or not isinstance(self.model, str):
            raise ConfigError(f"parameter model={self.model!r}: name a model")
        if self.model in self.models or len(set(self.models)) < len(self.models):
            raise ConfigError(f"parameter models={self.models!r} repeats a model (model={self.model!r} is scanned "
                              "already)")
        check_choice("intervention", self.intervention, INTERVENTIONS)
        check_choice("mode", self.mode, (*MODES, "both"))
        check_range("horizon", self.horizon, 1, 200)
        check_range("n_prompts", self.n_prompts, 1, 4096)
        if self.chunk_size != "auto":
            check_range("chunk_size", self.chunk_size, 1, 4096)
        check_range("n_bootstrap", self.n_bootstrap, 10, 10_000)
        if not self.positions or not all(_position_ok(p) for p in self.positions):
            raise ConfigError(f"parameter positions={self.positions!r}: give ints >= 1 (0 is BOS), "
                              "'sentence_end:N' (the first '.' at or after token N), or 'active:N' alone")
        if self.active_start is not None and len(self.positions) > 1:
            raise ConfigError(f"parameter positions={self.positions!r}: 'active:N' (where each feature fires) "
                              "is a position of its own; give it alone")
        if self.features == "live":
            pass
        elif isinstance(self.features, str):
            kind, _, n = self.features.partition("-")
            if kind not in ("top", "random") or not n.isdigit() or int(n) < 1:
                raise ConfigError(f"parameter features={self.features!r}: use 'top-N', 'random-N', 'live' "
                                  "or a list of ids")
        elif not isinstance(self.features, list) or not self.features:
            raise ConfigError(f"parameter features={self.features!r}: use 'top-N', 'random-N', 'live' "
                              "or a list of ids")

    @classmethod
    def smoke(cls) -> "PersistenceConfig":
        return cls(features="top-3", intervention="ablate", positions=[8], horizon=12, n_prompts=6, chunk_size=8,
                   n_bootstrap=50)

    @property
    def active_start(self) -> int | None:
        """N of an ``"active:N"`` position: each feature is edited at its first firing in tokens
        N .. N + ACTIVE_WINDOW - 1 of each story (none where it never fires there)."""
        p = self.positions[0]
        return int(p.split(":")[1]) if isinstance(p, str) and p.startswith("active:") else None

    @property
    def chunk(self) -> int:
        """Interventions per unit: ``chunk_size``, or for "auto" the model's recommended size (small
        enough that a generation's cache fits a notebook's 1.5 GB on smollm2), else 256."""
        return int(self.recommended("chunk_size") or 256) if self.chunk_size == "auto" else int(self.chunk_size)

    @property
    def scanned(self) -> list[str]:
        """Every model of the scan, ``model`` first."""
        return [self.model, *self.models]

    def sae_name(self) -> str:
        """The SAE every model shares: ``sae``, or the first model's own when ``sae="auto"``."""
        if self.sae != "auto":
            return self.sae
        from gremlinkit import providers

        entry = providers.find(self.model)
        if entry is None or not entry.default_sae:
            raise ConfigError(f"parameter sae='auto': model {self.model!r} has no SAE of its own; name one "
                              "(a zoo SAE, a local SAE directory or a sae_lens release)")
        return entry.default_sae

    @property
    def modes(self) -> tuple[str, ...]:
        return MODES if self.mode == "both" else (self.mode,)

    def scan_key(self) -> str:
        """Hash of everything that changes the scan's rows (not where it is written)."""
        d = dataclasses.asdict(self)
        for k in ("output_dir", "n_bootstrap", *EXECUTION_FIELDS):
            d.pop(k, None)
        d["chunk_size"] = self.chunk  # as resolved: "auto" and the size it means are one scan
        d["scan_version"] = SCAN_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _position_ok(p: Any) -> bool:
    if isinstance(p, str):
        kind, _, n = p.partition(":")
        return kind in ("sentence_end", "active") and n.isdigit() and int(n) >= 1
    return isinstance(p, int) and not isinstance(p, bool) and p >= 1


_SENTENCE_END = re.compile(r"[\sĠ▁]*[.!?][\"')]*")  # a full stop as a token: ".", "Ġ.", '."', ...


def resolve_position(spec: Any, tokens: list[str]) -> int | None:
    """The edit position ``spec`` names in one story (None if the story has no such position); for
    ``"active:N"``, the last position the feature may be edited at, which the story must reach.
    ``tokens`` are the story's tokens as the tokenizer spells them; a sentence ends at a token that
    is a full stop (or ! or ?) with nothing but a space marker before it and quotes after it."""
    if isinstance(spec, int):
        return spec
    start = int(spec.split(":")[1])
    if spec.startswith("active:"):
        return start + ACTIVE_WINDOW - 1 if start + ACTIVE_WINDOW <= len(tokens) else None
    return next((i for i in range(start, len(tokens)) if _SENTENCE_END.fullmatch(tokens[i])), None)


# --------------------------------------------------------------------------- truth


def expected_topic_half_life(p_switch: float | None = None, n_topics: int | None = None,
                             sentence_tokens: float | None = None, world: str = "persona") -> float:
    """Half-life in tokens of a forced topic's surplus, from ``world``'s topic-switching chain
    (its own switch rate and topics unless given)."""
    from gremlinkit import worlds

    story = worlds.story(world)
    return story.topic_half_life(story.p_topic_switch if p_switch is None else p_switch,
                                 len(story.topics) if n_topics is None else n_topics, sentence_tokens)


# --------------------------------------------------------------------------- the scan


def topic_candidates(subject, topics, k: int = 3, n_docs: int = 120, seed: int = 0, world: str = "persona"
                     ) -> dict[str, list[int]]:
    """Per topic, the ``k`` SAE features that mark it best on held-out stories of ``world``, by the
    score `topic_features` ranks by (the first is its choice); the stories are encoded once."""
    from gremlinkit import worlds
    from gremlinkit.experiments.zoo_tour import corpus_features, heldout_corpus

    story = worlds.story(world)
    for topic in topics:
        check_choice("control_topic", topic, list(story.topics))
    labels, feats = corpus_features(subject, heldout_corpus(n_docs, seed, story), story)
    on = to_numpy(feats > 0).astype(bool)
    return {topic: [int(f) for f in np.argsort(-marker_scores(on, (labels.topic == topic).to_numpy()),
                                               kind="stable")[:k]] for topic in topics}


def topic_features(subject, topics, n_docs: int = 120, seed: int = 0, world: str = "persona") -> dict[str, int]:
    """Per topic, the SAE feature that best marks it on held-out stories of ``world``, by their
    labels: the largest recall x (precision - base rate), so a generic feature that fires everywhere
    (precision ~ the base rate) does not win. A topic persists by the stories' own switching chain
    (:func:`expected_topic_half_life`), which makes such a feature a positive control for scans.
    The stories are encoded once for every topic (the first of `topic_candidates`)."""
    return {topic: fs[0] for topic, fs in topic_candidates(subject, topics, 1, n_docs, seed, world).items()}


def marker_scores(on: np.ndarray, marked: np.ndarray) -> np.ndarray:
    """How well each feature marks the ``marked`` tokens, given which features are ``on`` at each
    token (tokens, d_sae): recall x (precision - base rate)."""
    recall, precision = on[marked].mean(0), on[marked].sum(0) / on.sum(0).clip(1)
    return recall * (precision - marked.mean())


def best_marker(on: np.ndarray, marked: np.ndarray) -> int:
    """The feature that best marks the ``marked`` tokens (the largest `marker_scores`)."""
    return int(marker_scores(on, marked).argmax())


def topic_feature(subject, topic: str, n_docs: int = 120, seed: int = 0) -> int:
    """The SAE feature that best marks ``topic`` (see `topic_features`)."""
    return topic_features(subject, [topic], n_docs, seed)[topic]


def scan_prompts(cfg: PersistenceConfig, subject, world=None) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Documents of the world (``cfg.world`` unless given) with every edit position resolved, long
    enough for the horizon, tokenised as ``subject`` reads them (its BOS policy included).

    Returns the token ids and, per document, its edit positions (one per entry of ``positions``).
    """
    from gremlinkit import worlds

    world = world or worlds.resolve(cfg.world, cfg.model, cfg.seed)
    pool = world.documents(max(4 * cfg.n_prompts, 64), seed=20_000 + cfg.seed)
    tok = subject.tokenizer
    prompts, positions = [], []
    marker = _marker_id(cfg.marker, tok)
    for text in pool:
        ids = encode(text, tok, subject.prepends_bos)
        if marker is not None:
            ids.insert(1 if subject.prepends_bos else 0, marker)
        pos = [resolve_position(p, tok.convert_ids_to_tokens(ids)) for p in cfg.positions]
        if any(p is None or p + cfg.horizon + 1 > len(ids) for p in pos):
            continue
        prompts.append(host_ids(ids[: max(pos) + cfg.horizon + 1]))
        positions.append(pos)
        if len(prompts) == cfg.n_prompts:
            return prompts, positions
    raise ConfigError(f"only {len(prompts)} of {len(pool)} documents of the {world.name} world have every position "
                      f"in {cfg.positions} plus horizon={cfg.horizon} tokens; lower positions, horizon or n_prompts")


def _marker_id(marker: str, tokenizer) -> int | None:
    """The id of the one token ``marker`` names (None for ""), or a clear error."""
    if not marker:
        return None
    if marker not in tokenizer.get_vocab():
        raise ConfigError(f"parameter marker={marker!r} is not one token of the model's vocabulary")
    return tokenizer.convert_tokens_to_ids(marker)


def choose_features(subject, prompts: list[torch.Tensor], spec: Any, seed: int) -> list[int]:
    """Explicit ids, the top-N by firing frequency on the prompts, N random live features, or every
    live feature ("live")."""
    if isinstance(spec, list):
        for f in spec:
            iv.validate(iv.ablate(f), n_rows=1, max_len=[1], d_model=subject.d_model, d_sae=subject.d_sae)
        return [int(f) for f in spec]
    # Only real tokens after BOS: padding reads as zero, and an SAE can encode zero to active features.
    feats = subject.features(prompts)[subject.counted(prompts)]  # (N, d_sae)
    freq = (feats > 0).float().mean(0)
    live = torch.nonzero(freq > 0).flatten()
    if spec == "live":
        return live.tolist()
    kind, n = spec.split("-")[0], int(spec.split("-")[1])
    if kind == "top":
        return freq.argsort(descending=True)[:n].tolist()
    gen = torch.Generator().manual_seed(seed)
    return sorted(live[torch.randperm(len(live), generator=gen)[:n]].tolist())


def _units(features: list[int], positions: list[list[int]]) -> list[tuple[int, int, int]]:
    """(feature, prompt_id, position) for every intervention of the scan, prompt by prompt: a chunk
    then holds every feature's edit of few prompts, and few baseline rows."""
    return [(f, p, pos) for p, row in enumerate(positions) for pos in row for f in features]


def _active_units(subject, prompts: list[torch.Tensor], features: list[int], start: int
                  ) -> list[tuple[int, int, int]]:
    """(feature, prompt_id, position) at each feature's first firing in tokens ``start`` ..
    ``start + ACTIVE_WINDOW - 1`` of each prompt, prompt by prompt; none where it never fires there.
    Firing is read in ``subject`` (the scan's first model); every model is edited at these units."""
    window = [p[: start + ACTIVE_WINDOW] for p in prompts]  # every prompt reaches this far: no padding
    on = subject.features(window)[:, start:, features] > 0  # (prompts, window, features)
    first = to_numpy(on.int().argmax(1))  # the first firing (0 where none: masked by ``fires``)
    fires = to_numpy(on.any(1))
    return [(f, p, start + int(first[p, j])) for p in range(len(prompts)) for j, f in enumerate(features)
            if fires[p, j]]


def _edit(cfg: PersistenceConfig, feature: int, pos: int, row: int, values: dict | None = None
          ) -> iv.FeatureEdit:
    if cfg.intervention == "ablate":
        return iv.ablate(feature, pos=pos, rows=row)
    if cfg.intervention == "mean_ablate":  # the mean-ablation beside the zero one: a typical value, not none
        return iv.clamp(feature, values[feature], pos=pos, rows=row)
    return iv.add(feature, cfg.scale, pos=pos, rows=row)


def _row_seed(cfg: PersistenceConfig, prompt_id: int, pos: int) -> int:
    """One noise stream per (prompt, position): an edited row and its baseline share it."""
    return cfg.seed * 1_000_003 + prompt_id * 1009 + pos


@torch.no_grad()
def _trajectories(subject, cfg, mode, prompts, rows: list[tuple[int, int]], edits) -> dict[str, Any]:
    """Features at lags 0..H after each (prompt, position) row's edit position: pre-activations
    (``pre``) and activations (``post``), each (rows, H+1, d_sae), and the generated ``tokens``
    (rows, H+1), None when teacher-forced."""
    h = cfg.horizon
    if mode == "teacher_forced":
        acts = subject.activations([prompts[p][: pos + h + 1] for p, pos in rows], subject.sae_site, edits)
        window = torch.stack([acts[k, pos: pos + h + 1] for k, (_, pos) in enumerate(rows)])  # (R, H+1, d)
        post, pre = iv.encode_with_pre(subject.sae, window)
        return {"pre": pre, "post": post, "tokens": None}
    seeds = [_row_seed(cfg, p, pos) for p, pos in rows]
    out = subject.generate([prompts[p][: pos + 1] for p, pos in rows], h + 1, edits, seed=seeds,
                           temperature=cfg.temperature, record=["features_pre", "features"])
    # step s records position pos + s
    return {"pre": out.records["features_pre"], "post": out.records["features"], "tokens": out.tokens}


def _scan_chunk(subject, cfg, mode, prompts, chunk, values=None) -> tuple[dict, dict]:
    """Baseline and intervened trajectories for one chunk, in one batch: each baseline row is run
    once, unedited, beside the edited rows (one forward or generation instead of two).

    Returns per-unit values: (units, H+1) of the edited feature, or (units, H+1, d_sae) of every
    feature with ``record_all``, for ``pre`` and ``post``; and ``diverged`` (units,).
    """
    keys = sorted({(p, pos) for _, p, pos in chunk})
    rows = keys + [(p, pos) for _, p, pos in chunk]
    edits = [_edit(cfg, f, pos, len(keys) + k, values) for k, (f, _, pos) in enumerate(chunk)]
    both = _trajectories(subject, cfg, mode, prompts, rows, edits)  # (K + R, H+1, d_sae)
    device = both["pre"].device
    base_rows = torch.tensor([{k: i for i, k in enumerate(keys)}[(p, pos)] for _, p, pos in chunk], device=device)
    edit_rows = torch.arange(len(keys), len(rows), device=device)
    own = torch.tensor([f for f, _, _ in chunk], device=device)

    def pick(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return t[idx] if cfg.record_all else t[idx, :, own]  # only what the table keeps

    base = {k: pick(both[k], base_rows) for k in ("pre", "post")}
    inter = {k: pick(both[k], edit_rows) for k in ("pre", "post")}
    tokens = both["tokens"]
    if tokens is None:  # teacher-forced: the continuation is given, so nothing can diverge
        tokens = torch.full((len(rows), base["pre"].shape[1]), -1, dtype=torch.long, device=device)
    base["tokens"], inter["tokens"] = tokens[base_rows], tokens[edit_rows]  # on the subject's device, as features
    inter["diverged"] = (inter["tokens"] != base["tokens"]).any(1)
    return base, inter


def long_table(model, mode, units, base, inter, record_all) -> pd.DataFrame:
    """Tidy rows: one per (unit, lag[, measured feature])."""
    n_units, n_lags = len(units), base["pre"].shape[1]
    shape = (n_units, n_lags, base["pre"].shape[2]) if record_all else (n_units, n_lags)
    idx = np.indices(shape).reshape(len(shape), -1)  # row-major, as the tensors flatten
    unit_idx = idx[0]
    df = pd.DataFrame({"model": pd.Categorical([model] * len(unit_idx)),
                       "feature": np.array([u[0] for u in units])[unit_idx],
                       "prompt_id": np.array([u[1] for u in units])[unit_idx],
                       "position": np.array([u[2] for u in units])[unit_idx],
                       "mode": pd.Categorical([mode] * len(unit_idx)), "lag": idx[1]})
    for suffix, key in (("", "pre"), ("_post", "post")):
        df[f"baseline{suffix}"] = to_numpy(base[key]).reshape(-1)
        df[f"intervened{suffix}"] = to_numpy(inter[key]).reshape(-1)
        df[f"delta{suffix}"] = df[f"intervened{suffix}"] - df[f"baseline{suffix}"]
    df["diverged"] = to_numpy(inter["diverged"])[unit_idx]
    lag_idx = (unit_idx, idx[1])  # a token per (unit, lag), whatever was measured
    df["token"] = to_numpy(base["tokens"]).astype(np.int32)[lag_idx]
    df["intervened_token"] = to_numpy(inter["tokens"]).astype(np.int32)[lag_idx]
    if record_all:
        df["measured"] = idx[2]
    return df[COLUMNS + (["measured"] if record_all else [])]


@dataclass(frozen=True)
class Unit:
    """One unit of a scan's work: the ``chunk_size`` interventions from ``start`` on (a few
    prompts x a run of features, in `_units`' prompt-major order) in one model and mode. Its rows
    depend on its key alone (the noise streams come from the prompt and position), never on which
    worker runs it or when."""

    model: str
    mode: str
    start: int

    @property
    def key(self) -> str:
        return f"{Path(self.model).name}-{self.mode}-{self.start:06d}"


@dataclass
class Plan:
    """Everything a scan's units need, fixed before any of them runs: the config, the prompts, and
    every (feature, prompt_id, position) intervention."""

    cfg: PersistenceConfig
    prompts: list[torch.Tensor]
    interventions: list[tuple[int, int, int]]
    values: dict = field(default_factory=dict)  # feature -> the value a mean-ablation sets it to

    @property
    def directory(self) -> Path:
        return Path(self.cfg.output_dir) / f"scan-{self.cfg.scan_key()}"

    def units(self) -> list[Unit]:
        return [Unit(m, mode, start) for m in self.cfg.scanned for mode in self.cfg.modes
                for start in range(0, len(self.interventions), self.cfg.chunk)]

    def chunk(self, unit: Unit) -> list[tuple[int, int, int]]:
        return self.interventions[unit.start: unit.start + self.cfg.chunk]

    def path(self, unit: Unit) -> Path:
        return self.directory / f"{unit.key}.parquet"


def plan(cfg: PersistenceConfig, first) -> Plan:
    """The scan's prompts and interventions, chosen with ``first`` (the subject of ``cfg.model``)."""
    prompts, positions = scan_prompts(cfg, first)
    features = choose_features(first, prompts, cfg.features, cfg.seed)
    units = _units(features, positions) if cfg.active_start is None else \
        _active_units(first, prompts, features, cfg.active_start)
    values = mean_values(first, prompts, features) if cfg.intervention == "mean_ablate" else {}
    return Plan(cfg, prompts, units, values)


def mean_values(subject, prompts: list[torch.Tensor], features: list[int]) -> dict[int, float]:
    """Each feature's mean activation over the prompts' counted tokens (`Subject.counted`), zeros
    included: what a mean-ablation sets it to."""
    feats = subject.features(prompts)[subject.counted(prompts)][:, features].float()  # (N, F)
    return {f: float(v) for f, v in zip(features, feats.mean(0).tolist())}


def run_unit(subject, cfg: PersistenceConfig, prompts: list[torch.Tensor], unit: Unit,
             chunk: list[tuple[int, int, int]], values: dict | None = None) -> pd.DataFrame:
    """The tidy rows of one unit (`COLUMNS`), computed in ``subject`` (the unit's model);
    ``values`` are the plan's mean-ablation values."""
    base, inter = _scan_chunk(subject, cfg, unit.mode, prompts, chunk, values)
    return long_table(Path(unit.model).name, unit.mode, chunk, base, inter, cfg.record_all)


def load_subject(cfg: PersistenceConfig, model: str):
    """``model`` as a scan reads it: with the scan's shared SAE, on its device and in its dtype."""
    from gremlinkit import load

    return load(model, sae=cfg.sae_name(), **cfg.load_kwargs())


def scan(cfg: PersistenceConfig, subjects: dict | None = None, runner=None) -> pd.DataFrame:
    """Run (or resume) the scan; returns the tidy table with columns ``COLUMNS`` (+ ``measured``).

    ``subjects`` maps model names to loaded subjects (a missing one is loaded when needed). The
    units not on disk yet are run by ``runner`` (`gremlinkit.workers`: in this process by default,
    or on Ray workers), each written atomically as it finishes."""
    from gremlinkit import workers

    subjects = dict(subjects or {})
    if cfg.model not in subjects:
        subjects[cfg.model] = load_subject(cfg, cfg.model)
    the_plan = plan(cfg, subjects[cfg.model])
    units = the_plan.units()
    todo = [u for u in units if not the_plan.path(u).exists()]
    if todo:
        with tqdm(total=len(units), initial=len(units) - len(todo), desc="persistence scan", unit="unit") as bar:
            (runner or workers.Local()).run(the_plan, todo, bar, subjects)
    table = pd.concat([pd.read_parquet(the_plan.path(u)) for u in units], ignore_index=True)
    return table.astype({"model": "category", "mode": "category"})  # two labels over millions of rows


@dataclass
class PersistenceResult(Result):
    scan: pd.DataFrame  # one row per (model, feature, prompt, position, mode, lag): `COLUMNS`
    summary: pd.DataFrame  # one row per (model, mode, feature): `summarize`
    metrics: dict = field(default_factory=dict)


def run(cfg: PersistenceConfig, subjects: dict | None = None) -> PersistenceResult:
    """The experiment: the scan (run or resumed, `scan`), its summary and metrics."""
    table = scan(cfg, subjects)
    summary = summarize(table, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
    return PersistenceResult(table, summary, metrics(summary))


# --------------------------------------------------------------------------- summary


def summarize(df: pd.DataFrame, n_bootstrap: int = 200, seed: int = 0) -> pd.DataFrame:
    """One row per (model, mode, feature), by the rule in the module docstring: direct effect, tail
    effect and its p- and q-value, persistence, and a fitted half-life with a bootstrap interval,
    censored at the horizon."""
    own = own_feature_rows(df)
    rng = np.random.default_rng(seed)
    rows = []
    for (model, mode, feature), g in own.groupby(["model", "mode", "feature"], sort=True):
        # (units, lags): one trajectory per (prompt, position)
        wide = g.pivot_table(index=["prompt_id", "position"], columns="lag", values=["delta", "delta_post"])
        mat, post = wide["delta"].to_numpy(), wide["delta_post"].to_numpy()
        horizon, start = mat.shape[1] - 1, tail_start(mat.shape[1] - 1)
        curve = mat.mean(0)
        sign = float(np.sign(curve[0])) if abs(curve[0]) > ATOL else 0.0
        tails = mat[:, start:].mean(1)  # (units,)
        p = tail_test(tails, sign)
        fit_tail = p < TAIL_ALPHA
        hl = half_life(mat, fit_tail)
        low, high = half_life_interval(mat, fit_tail, n_bootstrap, rng)
        rows.append({"model": model, "mode": mode, "feature": int(feature), "effect_lag0": float(curve[0]),
                     "effect_lag1": float(curve[1]), "auc": float(np.abs(curve[1:]).sum()),
                     "tail_effect": float(tails.mean()), "tail_effect_post": float(post[:, start:].mean()),
                     "tail_se": float(tails.std(ddof=1) / np.sqrt(len(tails))) if len(tails) > 1 else float("nan"),
                     "units": len(tails),
                     "p_value": p, "half_life": min(hl, horizon), "half_life_low": float(min(low, horizon)),
                     "half_life_high": float(min(high, horizon)), "half_life_censored": bool(hl >= horizon),
                     "divergence": float(g.groupby(["prompt_id", "position"]).diverged.first().mean())})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    # Benjamini-Hochberg over every feature of one (model, mode): the census is one family of tests.
    out["q_value"] = out.groupby(["model", "mode"]).p_value.transform(lambda p: false_discovery_control(p, method="bh"))
    out["persistent"] = out.q_value <= FDR_Q
    return out


def behaviour(df: pd.DataFrame, words: list[int], window: tuple[int, int] = BEHAVIOUR_WINDOW) -> pd.DataFrame:
    """The behavioural form of persistence, per (model, feature), from on-policy rows: over lags
    ``window[0]..window[1]`` after the edit, the change in the feature's own *prevalence* (the
    share of tokens where its activation is on) and in the rate of ``words`` (token ids, e.g. the
    reward's words) among the chosen tokens, each edited run minus its paired no-edit run, averaged
    over prompts, with a two-sided paired t-test over prompts; ``edits`` counts the edited runs and
    ``divergence`` is the share of them whose continuation changed at all."""
    own = own_feature_rows(df)
    lo, hi = window
    on = own[own["mode"] == "on_policy"]
    if on.empty or on.lag.max() < hi:
        raise ConfigError(f"the behavioural window, lags {lo}..{hi}, needs an on-policy scan with horizon >= {hi}")
    w = on[on.lag.between(lo, hi)]
    hits = np.isin(w.intervened_token.to_numpy(), words).astype(float) - np.isin(w.token.to_numpy(), words)
    per_prompt = w.assign(prevalence=(w.intervened_post > 0).astype(float) - (w.baseline_post > 0), words=hits) \
        .groupby(["model", "feature", "prompt_id", "position"], observed=True)[["prevalence", "words", "diverged"]] \
        .mean()
    rows = []
    for (model, feature), g in per_prompt.groupby(level=["model", "feature"], observed=True):
        row = {"model": model, "feature": int(feature), "edits": len(g), "divergence": float(g.diverged.mean())}
        for col, name in (("prevalence", "prevalence_delta"), ("words", "word_rate_delta")):
            x = g[col].to_numpy()
            row[name] = float(x.mean())
            row[f"{name}_p"] = float(ttest_1samp(x, 0.0).pvalue) if len(x) > 1 and np.ptp(x) > 0 else \
                (1.0 if not x.any() else 0.0)
        rows.append(row)
    return pd.DataFrame(rows)


def metrics(summary: pd.DataFrame) -> dict[str, float]:
    """Key numbers per model and mode, for the regression harness."""
    out = {}
    for (model, mode), g in summary.groupby(["model", "mode"]):
        key = f"{model}_{mode}"
        out[f"{key}_median_half_life"] = float(g.half_life.median())
        out[f"{key}_persistent_features"] = int(g.persistent.sum())
        out[f"{key}_mean_abs_effect_lag1"] = float(g.effect_lag1.abs().mean())
        out[f"{key}_mean_abs_tail_effect"] = float(g.tail_effect.abs().mean())
        if mode == "on_policy":
            out[f"{key}_divergence"] = float(g.divergence.mean())
    return out
