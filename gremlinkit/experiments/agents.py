"""Agents and attractors: does RL toward a distant reward make a simulator represent its goal, and
collapse what it writes? (notebook 06)

**The value probe.** An agent trained toward a distant terminal reward should represent it, as
AlphaZero's value head predicts the win; a next-token simulator need not. Each model writes
``n_rollouts`` continuations of held-out story prompts (temperature 1, ``horizon`` tokens) and earns
the RL organisms' reward (the world's story `reward`: the sea-word fraction of the last ``tail``
tokens). A
ridge probe per layer reads the residual stream at the ``probe_tokens`` positions from which the
first ``probe_tokens`` tokens are sampled (the prompt's last token, then each generated token; all
before the rewarded tail) and predicts the reward the rollout will earn. Reported: the
out-of-fold R² (5-fold, folds by rollout) with a bootstrap interval over rollouts, per layer and
model, and the layer where it peaks.

*Positive control.* The corpus plants a label the story so far makes predictable: the sea-word
fraction of the next ``tail`` tokens after each position, which follows the topic chain
(the world's `p_topic_switch`). The same probe, on held-out corpus windows read teacher-forced, must
recover it: the control is *found* when its R² interval lies above 0, and its share of the *oracle*
R² (the labels' own prediction: the mean label given the topic of the last topic word seen, fitted
on the same folds) says how much of a predictable signal a single position's residual shows. A null
value probe is read against it: the control's R² is the size of effect the probe could see.

**Mode collapse and attractors.** Four measures per model, each first applied to the corpus's own
text, where its value is known:

* *next-token entropy* on held-out stories, beside the cross-entropy: for a calibrated model the two
  agree (the corpus check: toy-base's ratio is near 1);
* *diversity* of ``samples_per_prompt`` continuations per prompt (the two introductions: the cast is
  fixed, the story is not) at each of ``temperatures``: distinct-1 and distinct-2 within a prompt,
  the mean pairwise Jaccard overlap of samples' bigram sets (per input), distinct-2 over all prompts
  (across inputs); the corpus reference draws continuations of the same casts from the generator.
  The claim under test: an RL model's diversity barely responds to temperature (the *temperature
  response*, distinct-2 at the highest temperature minus the lowest);
* *return to the favoured state* after an off-world sentence: from a context in the reward's topic
  (two introductions and a sea sentence), the sea-word rate over the next ``return_tokens`` tokens,
  with and without an injected sentence of another topic. The gap decays as the model returns; its
  half-life on the corpus is the topic chain's, `persistence.expected_topic_half_life` (the check);
* *random-choice collapse*: prompts whose corpus continuation is uniform over N options (the first
  name of 12, the second of the 11 left, a topic noun of 30), each model's entropy over the options
  (its next-token distribution renormalised to them) against the true ``ln N``, checked by the
  corpus's own (Miller-Madow) entropy of those choices.

**Layer localisation.** Where each fine-tune changed the weights and the residual stream (relative
changes per block), beside the probe's peak layer.

Everything here reads the story source of the base model's world (`story_source`): the persona
world's for the toy family's organisms, and for any other model the English stories
(`gremlinkit.stories.EnglishStories`) spelled in its tokenizer, whose reward is the smollm2
organisms'. Where the measures above say "word", read "token": the toy's words are its tokens, and
an English story's are its token strings. On the English stories the random choices are the two
names the generator draws uniformly (`EnglishStories.choice_prompts`).
"""

from __future__ import annotations

import functools
import math
import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.linalg import LinAlgWarning
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from gremlinkit import providers, stats, stories, worlds
from gremlinkit.errors import ConfigError
from gremlinkit.params import Placement, check_range
from gremlinkit.prompts import host_ids, resolve_bos
from gremlinkit.results import Result, to_numpy
from gremlinkit.sites import SiteMap

RETURN_EARLY = 16  # the displacement is read over the first 16 tokens after the injection
FOLDS = 5
ALPHAS = np.logspace(-2, 4, 7)  # ridge penalties searched inside each fold


def true_entropies(story=None) -> dict[str, float]:
    """Each random choice's true entropy, ``ln N`` over its N options in the world's stories."""
    story = story or worlds.story("persona")
    if isinstance(story, stories.EnglishStories):
        return story.true_entropies()
    return {"first name": math.log(len(story.names)), "second name": math.log(len(story.names) - 1),
            "topic noun": math.log(sum(len(t["nouns"]) for t in story.topics.values()))}


@functools.lru_cache(maxsize=8)
def story_source(model: str):
    """The story source of ``model``'s world (`gremlinkit.worlds.story`) where it has one (the
    toy's persona stories), else the English stories spelled in ``model``'s tokenizer, with a BOS
    where the model reads one by default."""
    try:
        return worlds.story("auto", str(model))
    except ConfigError:  # a world without a story generator: the English stories
        pass
    from transformers import AutoTokenizer

    entry = providers.find(str(model))
    tokenizer = AutoTokenizer.from_pretrained(entry.path if entry is not None else model)
    return stories.EnglishStories(tokenizer, resolve_bos(tokenizer, entry.bos if entry is not None else None))


def story_of(cfg: "AgentsConfig"):
    """The story source of the base model (`story_source`)."""
    return story_source(str(cfg.models[0]))


@dataclass(frozen=True)
class AgentsConfig(Placement):
    models: list = field(default_factory=lambda: ["toy-base", "toy-sft", "toy-rl"])  # the first is the base
    n_rollouts: int = 256  # rollouts per model for the value probe
    horizon: int = 48  # tokens per rollout (the RL organisms' horizon)
    tail: int = 16  # the reward counts sea words in the last `tail` tokens
    probe_tokens: int = 32  # generated positions whose residual the probe reads (before the tail)
    probe_every: Any = "auto"  # the probe reads every k-th layer's residual (and the last); "auto": the model's, else 1
    entropy_docs: int = 64  # held-out stories for next-token entropy
    diversity_prompts: int = 32  # casts whose continuations are compared
    samples_per_prompt: int = 8  # continuations per cast and temperature
    diversity_tokens: int = 32  # tokens per continuation
    temperatures: list = field(default_factory=lambda: [0.5, 1.0, 1.5])  # sampling temperatures for diversity
    return_prompts: int = 64  # sea contexts for the return curve
    return_tokens: int = 64  # tokens followed after the (injected) context
    choice_prompts: int = 64  # prompts per random choice
    n_bootstrap: int = 500  # resamples for every interval
    seed: int = 0  # seeds prompts, casts, sampling noise, folds and the bootstrap
    output_dir: str = "output/06_agents_and_attractors"  # where tables and metrics go

    def __post_init__(self) -> None:
        if not self.models or len(set(self.models)) < len(self.models):
            raise ConfigError(f"parameter models={self.models!r}: name one or more models, each once")
        check_range("n_rollouts", self.n_rollouts, 2 * FOLDS, 8192)
        check_range("horizon", self.horizon, 2, 200)
        check_range("tail", self.tail, 1, self.horizon)
        check_range("probe_tokens", self.probe_tokens, 1, self.horizon - self.tail + 1)
        if self.probe_every != "auto":
            check_range("probe_every", self.probe_every, 1, 1000)
        check_range("entropy_docs", self.entropy_docs, 2, 4096)
        check_range("diversity_prompts", self.diversity_prompts, 2, 4096)
        check_range("samples_per_prompt", self.samples_per_prompt, 2, 256)
        check_range("diversity_tokens", self.diversity_tokens, 2, 200)
        check_range("return_prompts", self.return_prompts, 2, 4096)
        check_range("return_tokens", self.return_tokens, 8, 200)
        check_range("choice_prompts", self.choice_prompts, 2, 4096)
        check_range("n_bootstrap", self.n_bootstrap, 10, 100_000)
        if not self.temperatures or any(not isinstance(t, (int, float)) or not 0 < t <= 5 for t in self.temperatures):
            raise ConfigError(f"parameter temperatures={self.temperatures!r}: give temperatures in (0, 5]")

    @property
    def every(self) -> int:
        """The probe's layer step: ``probe_every``, or for "auto" the model's recommended (1 if none)."""
        return int(self.recommended("probe_every") or 1) if self.probe_every == "auto" else int(self.probe_every)

    @classmethod
    def smoke(cls) -> "AgentsConfig":
        return cls(n_rollouts=40, entropy_docs=8, diversity_prompts=6, samples_per_prompt=4, return_prompts=16,
                   choice_prompts=8, n_bootstrap=100)


# --------------------------------------------------------------------------- shared pieces


def ids(subject, words: list[list[str]]) -> list[torch.Tensor]:
    """Word lists as token-id tensors (host-side, as every prompt; `Subject.batch` places them),
    with a clear error for a model that does not speak the persona world."""
    tok = subject.tokenizer
    unknown = {w for ws in words for w in ws} - tok.get_vocab().keys()
    if unknown:
        raise ConfigError(f"model {subject.name!r} does not read the base model's stories ({sorted(unknown)[:5]} are "
                          "not in its vocabulary): every model here needs the base model's tokenizer")
    return [host_ids(tok.convert_tokens_to_ids(w)) for w in words]


def words_of(subject, tokens: torch.Tensor) -> list[list[str]]:
    return [subject.tokenizer.convert_ids_to_tokens(r) for r in tokens.tolist()]


def sea_mask(words: list[list[str]], story=None) -> np.ndarray:
    """(rows, tokens) 1 where a token is one of the reward's sea words (the world's ``reward_words``)."""
    reward_words = (story or worlds.story("persona")).reward_words
    return np.array([[w in reward_words for w in ws] for ws in words], dtype=float)


def residual_sites(subject, every: int = 1) -> list[str]:
    """The residual stream entering the first block, then leaving every ``every``-th block and the
    last (layer L + 1 is block L's output: layers 0, k, 2k, ... and the last)."""
    n = subject.site_map.n_layers
    layers = sorted({*range(0, n + 1, every), n})
    return ["blocks.0.hook_resid_pre" if L == 0 else f"blocks.{L - 1}.hook_resid_post" for L in layers]


def layer_of(site: str) -> int:
    """0 for the embeddings' residual, L + 1 after block L."""
    return 0 if site.endswith("resid_pre") else int(site.split(".")[1]) + 1


def interval(values: np.ndarray, n_bootstrap: int, seed: int) -> tuple[float, float]:
    return stats.mean_interval(np.asarray(values, dtype=float), n_bootstrap, seed)


# --------------------------------------------------------------------------- the value probe


def rollouts(subject, prompts: list[list[str]], horizon: int, seed: int, marker: str | None = None,
             temperature: float = 1.0, batch_size: int = 64, story=None, every: int = 1
             ) -> tuple[list[list[str]], dict[str, torch.Tensor]]:
    """``horizon`` sampled tokens per prompt (``marker`` after BOS when given, as ``story`` places
    it) and the residual stream at each step's newest position, per `residual_sites` (every
    ``every``-th layer): (rows, horizon, d) on the host."""
    sites = residual_sites(subject, every)
    words, records = [], {s: [] for s in sites}
    story = story or worlds.story("persona")
    for start in range(0, len(prompts), batch_size):
        chunk = [story.with_marker(p, marker) for p in prompts[start:start + batch_size]]
        gen = subject.generate(ids(subject, chunk), horizon, seed=[seed + start + i for i in range(len(chunk))],
                               temperature=temperature, record=sites)
        words += words_of(subject, gen.tokens)
        for s in sites:
            records[s].append(gen.records[s].cpu())  # in the model's dtype: half the memory in bf16
    return words, {s: torch.cat(v) for s, v in records.items()}


def probe_r2(x: np.ndarray, y: np.ndarray, n_bootstrap: int, seed: int) -> dict[str, float]:
    """Out-of-fold R² of a ridge probe from ``x`` (rows, positions, d) to ``y``: one target per
    row (rows,) that its positions share, or one per position (rows, positions). A row's positions
    share a fold; the interval resamples rows."""
    rows, positions, _ = x.shape
    groups = np.repeat(np.arange(rows), positions)
    target = np.repeat(y, positions) if y.ndim == 1 else y.reshape(-1)
    flat = x.reshape(rows * positions, -1)
    pred = np.empty(len(target))
    with warnings.catch_warnings():  # the smallest penalties meet near-collinear residuals; the search skips them
        warnings.simplefilter("ignore", LinAlgWarning)
        for train, test in GroupKFold(n_splits=FOLDS).split(flat, groups=groups):
            # the penalty is chosen inside the training folds, again by whole rows
            alpha = best_alpha(flat[train], target[train], groups[train])
            probe = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(flat[train], target[train])
            pred[test] = probe.predict(flat[test])
    return {"r2": float(r2_score(target, pred)), **_r2_interval(target, pred, groups, n_bootstrap, seed)}


def best_alpha(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 3) -> float:
    """The penalty in ``ALPHAS`` that `GridSearchCV` over ``StandardScaler() + Ridge()`` would choose
    (the best mean R² over ``folds`` group folds, the first on a tie), found with one ridge fit per
    fold: each penalty is a target of its own (``Ridge`` takes one penalty per target)."""
    scores = np.zeros(len(ALPHAS))
    for train, test in GroupKFold(n_splits=folds).split(x, groups=groups):
        scaler = StandardScaler().fit(x[train])
        ridge = Ridge(alpha=ALPHAS).fit(scaler.transform(x[train]), np.repeat(y[train, None], len(ALPHAS), 1))
        truth = np.repeat(y[test, None], len(ALPHAS), 1)
        scores += r2_score(truth, ridge.predict(scaler.transform(x[test])), multioutput="raw_values") / folds
    return float(ALPHAS[np.argmax(scores)])


def _r2_interval(target: np.ndarray, pred: np.ndarray, groups: np.ndarray, n_bootstrap: int, seed: int
                 ) -> dict[str, float]:
    """2.5-97.5% range of R² over resamples of whole rows (``groups``, each the same size), every
    resample scored at once; a resample whose target is constant has no R² and is left out."""
    rng = np.random.default_rng(seed)
    order = np.argsort(groups, kind="stable")
    per = np.stack(np.split(order, np.flatnonzero(np.diff(groups[order])) + 1))  # row -> its indices
    idx = np.stack([per[rng.integers(0, len(per), len(per))].reshape(-1) for _ in range(n_bootstrap)], 1)
    idx = idx[:, np.ptp(target[idx], axis=0) > 0]
    if not idx.shape[1]:
        return {"r2_low": float("nan"), "r2_high": float("nan")}
    draws = r2_score(target[idx], pred[idx], multioutput="raw_values")
    low, high = np.quantile(draws, [0.025, 0.975])
    return {"r2_low": float(low), "r2_high": float(high)}


def _probe_rows(model: str, source: str, reps: dict[str, torch.Tensor], y: np.ndarray, cfg: AgentsConfig,
                positions: slice) -> list[dict]:
    return [{"model": model, "source": source, "layer": layer_of(s), "site": s,
             **probe_r2(to_numpy(r[:, positions]), y, cfg.n_bootstrap, cfg.seed)} for s, r in reps.items()]


def value_probe(subject, model: str, cfg: AgentsConfig, marker: str | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """The probe's R² per layer on ``model``'s own rollouts (``source`` "rollouts", or "rollouts
    marked" with ``marker``), and the rollouts' rewards."""
    story = story_of(cfg)
    prompts = story.story_prompts(cfg.n_rollouts, seed=90_000 + cfg.seed)
    words, reps = rollouts(subject, prompts, cfg.horizon, seed=cfg.seed * 100_000, marker=marker, story=story,
                           every=cfg.every)
    y = story.reward(words, cfg.tail)
    source = "rollouts" if marker is None else "rollouts marked"
    return pd.DataFrame(_probe_rows(model, source, reps, y, cfg, slice(0, cfg.probe_tokens))), y


def corpus_windows(n: int, cfg: AgentsConfig) -> tuple[list[list[str]], list[int], np.ndarray, np.ndarray]:
    """Held-out corpus windows shaped like the rollouts: a story prefix ending a sentence at or after token 16,
    then ``horizon`` tokens of the story. Returns the windows, where each prefix ends, the planted
    label at each probe position (the sea-word fraction of the next ``tail`` tokens), and the topic
    of the last topic word seen there ("" before any)."""
    story = story_of(cfg)
    gen = story.generate(4 * n, seed=95_000 + cfg.seed)
    labels = gen.labels
    seen = labels.topic.where(labels.word_class == "topic").groupby(labels.doc).ffill().fillna("")
    windows, ends = [], []
    for d, doc in enumerate(gen.docs):
        end = next((i for i in range(16, len(doc)) if doc[i] == "."), None)
        if end is not None and len(doc) - end > cfg.horizon:
            windows.append((d, doc[: end + 1 + cfg.horizon]))
            ends.append(end)
        if len(windows) == n:
            break
    if len(windows) < n:
        raise ConfigError(f"only {len(windows)} corpus windows for n_rollouts={n}")
    seen_at = seen.to_numpy().reshape(-1)
    starts = labels.groupby("doc").pos.idxmin().to_numpy()
    topics = np.array([[seen_at[starts[d] + end + t] for t in range(cfg.probe_tokens)]
                       for (d, _), end in zip(windows, ends)])  # the topic seen by probe position t
    words = [w for _, w in windows]
    label = sea_mask([w[e + 1: e + cfg.probe_tokens + cfg.tail] for w, e in zip(words, ends)], story)
    ahead = np.stack([label[:, t:t + cfg.tail].mean(1) for t in range(cfg.probe_tokens)], 1)  # (rows, positions)
    return words, ends, ahead, topics


def oracle_r2(label: np.ndarray, topics: np.ndarray, n_bootstrap: int, seed: int) -> dict[str, float]:
    """R² of the labels' own prediction of ``label`` (rows, positions): its mean given the topic
    seen, fitted on the training folds (`GroupKFold`, the probe's folds), evaluated out of fold."""
    rows, positions = topics.shape
    frame = pd.DataFrame({"row": np.repeat(np.arange(rows), positions), "topic": topics.reshape(-1),
                          "y": label.reshape(-1)})
    pred = np.empty(len(frame))
    for train, test in GroupKFold(n_splits=FOLDS).split(frame, groups=frame.row):
        means = frame.iloc[train].groupby("topic").y.mean()
        pred[test] = frame.iloc[test].topic.map(means).fillna(frame.iloc[train].y.mean()).to_numpy()
    return {"r2": float(r2_score(frame.y, pred)),
            **_r2_interval(frame.y.to_numpy(), pred, frame.row.to_numpy(), n_bootstrap, seed)}


def probe_control(subject, model: str, cfg: AgentsConfig, windows: tuple) -> pd.DataFrame:
    """The probe on corpus ``windows`` (`corpus_windows`: the same for every model) read teacher-forced;
    their oracle R² is `oracle_r2`, once for all models."""
    words, ends, label, _ = windows
    reps = subject.activations_at(ids(subject, words), residual_sites(subject, cfg.every))
    rows = torch.arange(len(words), device=subject.device)[:, None]
    at = torch.tensor(ends, device=subject.device)[:, None] + torch.arange(cfg.probe_tokens, device=subject.device)
    # (rows, probe_tokens): the prefix's last token, then the story, read where the activations are
    picked = {s: r[rows, at].float().cpu() for s, r in reps.items()}
    return pd.DataFrame(_probe_rows(model, "corpus", picked, label, cfg, slice(None)))


# --------------------------------------------------------------------------- layer localisation


def weight_changes(base, tuned, n_layers: int) -> pd.DataFrame:
    """Relative weight change per block (and embeddings), from two HF modules."""
    b, t = dict(base.named_parameters()), dict(tuned.named_parameters())
    layout = SiteMap.for_config(base.config).layout  # module paths come from the one site map
    embeddings = tuple(f"{m}." for m in (layout.embed, layout.pos_embed) if m)

    def group(name: str) -> str:
        if name.startswith(f"{layout.blocks}."):
            return f"block {name[len(layout.blocks) + 1:].split('.')[0]}"
        return "embeddings" if name.startswith(embeddings) else "final"

    rows: dict[str, tuple[float, float]] = {}  # part -> (sum of squared changes, sum of squared weights)
    with torch.no_grad():
        for name, p in b.items():
            g = group(name)
            d, n = rows.get(g, (0.0, 0.0))
            rows[g] = (d + float((t[name] - p).pow(2).sum()), n + float(p.pow(2).sum()))
    return pd.DataFrame([{"part": g, "relative_change": (d / n) ** 0.5} for g, (d, n) in rows.items()])


def activation_changes(base_subject, tuned_subject, n_docs: int = 40, seed: int = 0, story=None) -> pd.DataFrame:
    """Mean relative change of ``blocks.L.hook_resid_post`` over held-out stories' tokens."""
    story = story or worlds.story("persona")
    docs = story.encode(story.generate(n_docs, seed=80_000 + seed), base_subject.tokenizer)
    sites = [f"blocks.{L}.hook_resid_post" for L in range(base_subject.site_map.n_layers)]
    a, b = base_subject.activations_at(docs, sites), tuned_subject.activations_at(docs, sites)
    keep = base_subject.batch(docs).prompt_mask(skip_bos=True)
    return pd.DataFrame([{"layer": int(s.split(".")[1]),
                          "relative_change": float(((b[s] - a[s]).norm(dim=-1)[keep] / a[s].norm(dim=-1)[keep]).mean())}
                         for s in sites])


def localisation(base, tuned: dict, seed: int = 0, story=None) -> pd.DataFrame:
    """Where each fine-tune in ``tuned`` (name -> subject) changed ``base``: weights and resid_post."""
    rows = []
    for m, subject in tuned.items():
        w = weight_changes(base.model._module, subject.model._module, base.site_map.n_layers)
        a = activation_changes(base, subject, seed=seed, story=story)
        rows += [dict(model=m, measure="weights", **r) for r in w.to_dict("records")]
        rows += [dict(model=m, measure="resid_post", part=f"block {r['layer']}", relative_change=r["relative_change"])
                 for r in a.to_dict("records")]
    return pd.DataFrame(rows, columns=["model", "measure", "part", "relative_change"])


# --------------------------------------------------------------------------- entropy


@torch.no_grad()
def _entropies(subject, prompts: list[torch.Tensor], starts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt: the mean next-token entropy and cross-entropy (nats) of the tokens from
    ``starts[i]`` on, each predicted by the position before it."""
    ent, ce = [], []
    for first in range(0, len(prompts), 4):  # a few texts at a time: a real vocabulary's logits are large
        part = prompts[first:first + 4]
        logits = subject.run(part)  # (B, T, V), prompt indexing
        for i, p in enumerate(part):
            at = slice(starts[first + i] - 1, len(p) - 1)  # the positions that predict those tokens
            lp = torch.log_softmax(logits[i, at].float(), -1).cpu()
            ent.append(float(-(lp.exp() * lp).sum(-1).mean()))
            ce.append(float(-lp.gather(-1, p[at.start + 1:, None]).mean()))
    return np.array(ent), np.array(ce)


def next_token_entropy(subject, model: str, cfg: AgentsConfig) -> dict:
    """Mean next-token entropy and cross-entropy (nats) over held-out stories' positions, each with
    an interval over stories; their ratio is 1 for a calibrated model. The check that needs no
    corpus: on the model's own text (``horizon`` tokens sampled at temperature 1 after story
    prompts) the two are equal in expectation, so ``own_entropy_over_cross_entropy`` is near 1."""
    story = story_of(cfg)
    prompts = ids(subject, story.generate(cfg.entropy_docs, seed=96_000 + cfg.seed).docs)
    ent, ce = _entropies(subject, prompts, [1] * len(prompts))
    openings = ids(subject, story.story_prompts(cfg.entropy_docs, seed=96_500 + cfg.seed))
    gen = subject.generate(openings, cfg.horizon, seed=[96_500 + cfg.seed + i for i in range(len(openings))])
    own = [torch.cat([o, t.cpu()]) for o, t in zip(openings, gen.tokens)]
    own_ent, own_ce = _entropies(subject, own, [len(o) for o in openings])
    lo, hi = interval(ent, cfg.n_bootstrap, cfg.seed)
    return {"model": model, "entropy": float(ent.mean()), "entropy_low": lo, "entropy_high": hi,
            "cross_entropy": float(ce.mean()), "entropy_over_cross_entropy": float(ent.mean() / ce.mean()),
            "own_entropy_over_cross_entropy": float(own_ent.mean() / own_ce.mean())}


# --------------------------------------------------------------------------- diversity


def casts(n: int, seed: int, story=None) -> list[list[Any]]:
    """``n`` casts of the world's stories (two characters each), drawn with ``seed``."""
    story = story or worlds.story("persona")
    rng = random.Random(seed)
    return [story.draw_cast(rng) for _ in range(n)]


def _ngrams(ws: list[str], n: int) -> list[tuple]:
    return [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]


def diversity(samples: list[list[str]]) -> dict[str, float]:
    """Per-input diversity of one prompt's samples: distinct-1, distinct-2, and the mean pairwise
    Jaccard overlap of their bigram sets (1: every sample the same)."""
    uni = [g for s in samples for g in _ngrams(s, 1)]
    bi = [g for s in samples for g in _ngrams(s, 2)]
    sets = [set(_ngrams(s, 2)) for s in samples]
    overlap = [len(a & b) / len(a | b) if a | b else 1.0 for a, b in combinations(sets, 2)]
    return {"distinct_1": len(set(uni)) / len(uni), "distinct_2": len(set(bi)) / len(bi),
            "pairwise_overlap": float(np.mean(overlap))}


def _diversity_rows(model: str, temperature: float, per_prompt: list[list[list[str]]]) -> list[dict]:
    return [{"model": model, "temperature": temperature, "prompt": i, **diversity(s)} for i, s in enumerate(per_prompt)]


def corpus_samples(cfg: AgentsConfig) -> list[list[list[str]]]:
    """The generator's own continuations of each cast's introductions (the reference diversity)."""
    story = story_of(cfg)
    rng = random.Random(97_000 + cfg.seed)
    return [[story.continuation(c, rng.choice(list(story.topics)), cfg.diversity_tokens, rng)[0]
             for _ in range(cfg.samples_per_prompt)] for c in casts(cfg.diversity_prompts, cfg.seed, story)]


def model_samples(subject, cfg: AgentsConfig, temperature: float) -> list[list[list[str]]]:
    """``samples_per_prompt`` continuations of each cast's introductions, at ``temperature``."""
    story = story_of(cfg)
    intros = [story.introductions(c) for c in casts(cfg.diversity_prompts, cfg.seed, story)]
    k = cfg.samples_per_prompt
    prompts = [p for p in intros for _ in range(k)]
    gen = subject.generate(ids(subject, prompts), cfg.diversity_tokens, seed=list(range(len(prompts))),
                           temperature=temperature)
    words = words_of(subject, gen.tokens)
    return [words[i * k:(i + 1) * k] for i in range(len(intros))]


def across_inputs(per_prompt: list[list[list[str]]]) -> float:
    """distinct-2 over every sample of every prompt."""
    bi = [g for samples in per_prompt for s in samples for g in _ngrams(s, 2)]
    return len(set(bi)) / len(bi)


def diversity_summary(table: pd.DataFrame, across: dict, n_bootstrap: int, seed: int) -> pd.DataFrame:
    """Per model and temperature: each measure's mean over prompts with an interval, and
    distinct-2 across inputs."""
    rows = []
    for (model, temp), g in table.groupby(["model", "temperature"], sort=False):
        row = {"model": model, "temperature": temp}
        for m in ("distinct_1", "distinct_2", "pairwise_overlap"):
            lo, hi = interval(g[m].to_numpy(), n_bootstrap, seed)
            row.update({m: float(g[m].mean()), f"{m}_low": lo, f"{m}_high": hi})
        row["distinct_2_across"] = across[(model, temp)]
        rows.append(row)
    return pd.DataFrame(rows)


def temperature_response(table: pd.DataFrame, n_bootstrap: int, seed: int) -> pd.DataFrame:
    """distinct-2 at the highest temperature minus at the lowest, per model, with an interval
    over prompts (paired by prompt)."""
    rows = []
    for model, g in table[table.model != "corpus"].groupby("model", sort=False):
        lo_t, hi_t = g.temperature.min(), g.temperature.max()
        d = (g[g.temperature == hi_t].set_index("prompt").distinct_2
             - g[g.temperature == lo_t].set_index("prompt").distinct_2).to_numpy()
        low, high = interval(d, n_bootstrap, seed)
        rows.append({"model": model, "from": lo_t, "to": hi_t, "response": float(d.mean()), "response_low": low,
                     "response_high": high})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- return to the favoured state


def return_contexts(cfg: AgentsConfig) -> tuple[list[list[Any]], list[list[str]], list[list[str]], list[str]]:
    """Per prompt: its cast, the context (introductions and one sea sentence), the context with an
    off-world sentence injected (another topic, cycling through them), and that topic."""
    story = story_of(cfg)
    rng = random.Random(98_000 + cfg.seed)
    others = [t for t in story.topics if t != "sea"]
    cs = casts(cfg.return_prompts, cfg.seed + 1, story)
    clean = [story.introductions(c) + story.sentence(c, "sea", rng) for c in cs]
    topics = [others[i % len(others)] for i in range(len(cs))]
    injected = [ctx + story.sentence(c, t, rng) for ctx, c, t in zip(clean, cs, topics)]
    return cs, clean, injected, topics


def return_curves(clean: np.ndarray, injected: np.ndarray, model: str, n_bootstrap: int, seed: int
                  ) -> tuple[pd.DataFrame, dict]:
    """The sea-word rate per offset without and with the injection ((prompts, tokens) each), and
    the half-life of their gap (`stats.fit_half_life` on the mean gap, an interval over prompts)."""
    gap = clean - injected
    horizon = gap.shape[1]
    h = stats.fit_half_life(gap.mean(0), 0)
    rng = np.random.default_rng(seed)
    boots = rng.integers(0, len(gap), size=(n_bootstrap, len(gap)))
    low, high = np.nanquantile([stats.fit_half_life(gap[b].mean(0), 0) for b in boots], [0.025, 0.975])
    low, high = min(low, horizon), min(high, horizon)  # a gap that never closes in view is censored there
    curve = pd.DataFrame({"model": model, "offset": np.arange(gap.shape[1]), "clean": clean.mean(0),
                          "injected": injected.mean(0)})
    early = slice(0, RETURN_EARLY)
    displaced = 1 - injected[:, early].mean(1) / max(float(clean[:, early].mean()), 1e-9)  # per prompt
    d_low, d_high = interval(displaced, n_bootstrap, seed)
    curve["returned"] = curve.injected / curve.clean.where(curve.clean > 0)
    return curve, {"model": model, "gap_half_life": min(h, horizon), "gap_half_life_censored": bool(h >= horizon),
                   "gap_half_life_low": float(low),
                   "gap_half_life_high": float(high), "displacement": float(displaced.mean()),
                   "displacement_low": d_low, "displacement_high": d_high,
                   "sea_rate_clean": float(clean.mean()), "sea_rate_injected": float(injected.mean())}


def corpus_return(cfg: AgentsConfig) -> tuple[np.ndarray, np.ndarray]:
    """The generator's continuations of the same contexts: from the sea, and from the injected topic."""
    story = story_of(cfg)
    rng = random.Random(99_000 + cfg.seed)
    cs, _, _, topics = return_contexts(cfg)
    clean = [story.continuation(c, "sea", cfg.return_tokens, rng)[0] for c in cs]
    injected = [story.continuation(c, t, cfg.return_tokens, rng)[0] for c, t in zip(cs, topics)]
    return sea_mask(clean, story), sea_mask(injected, story)


def model_return(subject, cfg: AgentsConfig) -> tuple[np.ndarray, np.ndarray]:
    """The model's continuations of the contexts, with and without the injection, on paired noise."""
    _, clean, injected, _ = return_contexts(cfg)
    seeds = list(range(len(clean)))
    out = []
    for ctx in (clean, injected):
        gen = subject.generate(ids(subject, ctx), cfg.return_tokens, seed=seeds)
        out.append(sea_mask(words_of(subject, gen.tokens), story_of(cfg)))
    return out[0], out[1]


# --------------------------------------------------------------------------- random choices


def choice_prompts(cfg: AgentsConfig) -> dict[str, tuple[list[list[str]], list[list[str]]]]:
    """Prompts whose next token is uniform over N options in the corpus (`true_entropies`), each
    with its options: the first name (of 12), the second (the 11 left), the noun of a first sentence
    that reads "... near the" (its topic is not yet drawn: 30 nouns). The English stories have
    their own (`EnglishStories.choice_prompts`)."""
    story = story_of(cfg)
    if isinstance(story, stories.EnglishStories):
        return story.choice_prompts(cfg.choice_prompts, cfg.seed)
    cs = casts(cfg.choice_prompts, cfg.seed + 2, story)
    intros = [story.introductions(c) for c in cs]
    nouns = [w for t in story.topics.values() for w in t["nouns"]]
    near = [h + [c[0].name, story.persona_words["verb_s"][story.personas.index(c[0].persona)], c[1].name, "near",
                 "the"] for h, c in zip(intros, cs)]
    return {"first name": ([[story.bos]] * len(cs), [story.names] * len(cs)),
            "second name": ([h[: h.index(".") + 1] for h in intros],
                            [[n for n in story.names if n != c[0].name] for c in cs]),
            "topic noun": (near, [nouns] * len(cs))}


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp(min=1e-30))).sum(-1)


@torch.no_grad()
def choice_entropy(subject, model: str, cfg: AgentsConfig) -> list[dict]:
    """Per random choice: the entropy of the model's next token restricted to the options
    (renormalised; temperature 1) against the true ``ln N``, and the mass it puts on the options."""
    rows, truth = [], true_entropies(story_of(cfg))
    for choice, (prompts, options) in choice_prompts(cfg).items():
        p = ids(subject, prompts)
        probs = torch.softmax(subject.run(p, last=True).float(), -1).cpu()
        opts = [torch.tensor(subject.tokenizer.convert_tokens_to_ids(o), device=probs.device) for o in options]
        on = torch.stack([probs[i, o] for i, o in enumerate(opts)])  # (prompts, N)
        mass = on.sum(-1)
        ent = _entropy(on / mass[:, None]).numpy()
        lo, hi = interval(ent, cfg.n_bootstrap, cfg.seed)
        rows.append({"model": model, "choice": choice, "entropy": float(ent.mean()), "entropy_low": lo,
                     "entropy_high": hi, "true_entropy": truth[choice], "ratio": float(ent.mean() / truth[choice]),
                     "option_mass": float(mass.mean())})
    return rows


def _miller_madow(xs: list[str]) -> float:
    """Plug-in entropy of the draws ``xs`` with the Miller-Madow correction ``(K - 1) / 2n``."""
    counts = np.array(list(Counter(xs).values()), dtype=float)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum() + (len(counts) - 1) / (2 * counts.sum()))


def corpus_choices(n_docs: int = 6000, seed: int = 0, story=None) -> list[dict]:
    """Each choice's entropy as the corpus makes it (Miller-Madow estimates; the second name's is
    conditional on the first), the check that each prompt's truth is ``ln N``."""
    story = story or worlds.story("persona")
    truth = true_entropies(story)
    if isinstance(story, stories.EnglishStories):
        estimates = {c: (_miller_madow(draws) if c == "first name" else _conditional(draws), len(draws))
                     for c, draws in story.choice_draws(n_docs, seed).items()}
        return _choice_rows(estimates, truth)
    docs = story.generate(n_docs, seed=seed).docs
    intro = [d.index(".", d.index(".") + 1) + 1 for d in docs]  # where the first sentence starts
    estimates = {
        "first name": (_miller_madow([d[1] for d in docs]), len(docs)),
        "second name": (_conditional([f"{d[1]} {d[d.index('.') + 1]}" for d in docs]), len(docs)),
    }
    nouns = [d[i + 5] for d, i in zip(docs, intro) if d[i + 3:i + 5] == ["near", "the"]]
    estimates["topic noun"] = (_miller_madow(nouns), len(nouns))
    return _choice_rows(estimates, truth)


def _conditional(pairs: list[str]) -> float:
    """The Miller-Madow entropy of the second word of "first second" pairs given the first,
    averaged with the firsts' weights."""
    given: dict[str, list[str]] = {}
    for p in pairs:
        first, second = p.split()
        given.setdefault(first, []).append(second)
    return float(np.average([_miller_madow(v) for v in given.values()], weights=[len(v) for v in given.values()]))


def _choice_rows(estimates: dict[str, tuple[float, int]], truth: dict[str, float]) -> list[dict]:
    return [{"model": "corpus", "choice": c, "entropy": h, "entropy_low": np.nan, "entropy_high": np.nan,
             "true_entropy": truth[c], "ratio": h / truth[c], "option_mass": 1.0, "draws": n}
            for c, (h, n) in estimates.items()]


# --------------------------------------------------------------------------- the experiment


@dataclass
class AgentsResult(Result):
    probe: pd.DataFrame  # model, source (rollouts | corpus), layer, site, r2, r2_low, r2_high
    probe_peak: pd.DataFrame  # per model: the peak layer and its R², with the control beside it
    localisation: pd.DataFrame  # model, measure (weights | resid_post), part, relative_change
    entropy: pd.DataFrame  # per model: next-token entropy and cross-entropy
    diversity: pd.DataFrame  # per model and temperature, with the corpus at temperature 1
    diversity_prompts: pd.DataFrame  # the per-prompt rows behind it
    temperature_response: pd.DataFrame
    return_curve: pd.DataFrame  # model, offset, clean, injected, returned
    returns: pd.DataFrame  # per model: the gap's half-life
    choices: pd.DataFrame  # model, choice, entropy, true_entropy, ratio
    metrics: dict = field(default_factory=dict)


def _peaks(probe: pd.DataFrame, oracle: dict[str, float]) -> pd.DataFrame:
    rows = []
    for model, g in probe.groupby("model", sort=False):
        roll = g[g.source == "rollouts"]
        best = roll.loc[roll.r2.idxmax()]
        ctrl = g[g.source == "corpus"]
        cbest = ctrl.loc[ctrl.r2.idxmax()]
        rows.append({"model": model, "peak_layer": int(best.layer), "r2": best.r2, "r2_low": best.r2_low,
                     "r2_high": best.r2_high, "control_layer": int(cbest.layer), "control_r2": cbest.r2,
                     "control_r2_low": cbest.r2_low, "control_r2_high": cbest.r2_high,
                     "oracle_r2": oracle["r2"], "oracle_r2_low": oracle["r2_low"], "oracle_r2_high": oracle["r2_high"],
                     "control_share_of_oracle": cbest.r2 / oracle["r2"], "control_found": bool(cbest.r2_low > 0)})
    return pd.DataFrame(rows)


def run(cfg: AgentsConfig, subjects: dict | None = None) -> AgentsResult:
    from gremlinkit import load

    subjects = subjects or {m: load(m, sae=False, **cfg.load_kwargs()) for m in cfg.models}
    names = {m: str(m).rstrip("/").split("/")[-1] for m in cfg.models}
    probe, ent, div, curves, returns, choices, across = [], [], [], [], [], [], {}
    windows = corpus_windows(cfg.n_rollouts, cfg)  # the probe's control: one text and one oracle for every model
    oracle = oracle_r2(windows[2], windows[3], cfg.n_bootstrap, cfg.seed)
    corpus_div = corpus_samples(cfg)
    div += _diversity_rows("corpus", 1.0, corpus_div)
    across[("corpus", 1.0)] = across_inputs(corpus_div)
    curve, row = return_curves(*corpus_return(cfg), "corpus", cfg.n_bootstrap, cfg.seed)
    curves.append(curve)
    story = story_of(cfg)
    returns.append({**row, "truth_half_life": story.topic_half_life()})
    choices += corpus_choices(seed=cfg.seed, story=story)
    for m in tqdm(cfg.models, desc="models"):
        s, name = subjects[m], names[m]
        p, _ = value_probe(s, name, cfg)
        probe += [p, probe_control(s, name, cfg, windows)]
        ent.append(next_token_entropy(s, name, cfg))
        for t in cfg.temperatures:
            samples = model_samples(s, cfg, float(t))
            div += _diversity_rows(name, float(t), samples)
            across[(name, float(t))] = across_inputs(samples)
        curve, row = return_curves(*model_return(s, cfg), name, cfg.n_bootstrap, cfg.seed)
        curves.append(curve)
        returns.append(row)
        choices += choice_entropy(s, name, cfg)
    probe_table = pd.concat(probe, ignore_index=True)
    div_table = pd.DataFrame(div)
    base = cfg.models[0]
    res = AgentsResult(
        probe=probe_table, probe_peak=_peaks(probe_table, oracle),
        localisation=localisation(subjects[base], {names[m]: subjects[m] for m in cfg.models[1:]}, cfg.seed, story),
        entropy=pd.DataFrame(ent), diversity=diversity_summary(div_table, across, cfg.n_bootstrap, cfg.seed),
        diversity_prompts=div_table, temperature_response=temperature_response(div_table, cfg.n_bootstrap, cfg.seed),
        return_curve=pd.concat(curves, ignore_index=True), returns=pd.DataFrame(returns),
        choices=pd.DataFrame(choices))
    res.metrics.update(metrics(res))
    return res


def _flat(prefix: str, row: pd.Series, columns: list[str]) -> dict[str, float]:
    return {f"{prefix}.{c}": float(row[c]) for c in columns}


def metrics(res: AgentsResult) -> dict[str, float]:
    """Every headline figure with its interval, keyed ``<measure>.<model>.<figure>``."""
    out: dict[str, float] = {}
    for _, r in res.probe_peak.iterrows():
        out.update(_flat(f"probe.{r.model}", r, ["peak_layer", "r2", "r2_low", "r2_high", "control_r2",
                                                 "control_r2_low", "control_r2_high", "oracle_r2",
                                                 "control_share_of_oracle"]))
        out[f"probe.{r.model}.control_found"] = float(r.control_found)
    for _, r in res.entropy.iterrows():
        out.update(_flat(f"entropy.{r.model}", r, ["entropy", "entropy_low", "entropy_high", "cross_entropy",
                                                   "entropy_over_cross_entropy", "own_entropy_over_cross_entropy"]))
    for _, r in res.diversity.iterrows():
        out.update(_flat(f"diversity.{r.model}.t{r.temperature:g}", r,
                         ["distinct_2", "distinct_2_low", "distinct_2_high", "pairwise_overlap",
                          "pairwise_overlap_low", "pairwise_overlap_high", "distinct_2_across"]))
    for _, r in res.temperature_response.iterrows():
        out.update(_flat(f"temperature_response.{r.model}", r, ["response", "response_low", "response_high"]))
    for _, r in res.returns.iterrows():
        cols = ["gap_half_life", "gap_half_life_low", "gap_half_life_high", "displacement", "displacement_low",
                "displacement_high", "sea_rate_clean", "sea_rate_injected"]
        out.update(_flat(f"return.{r.model}", r, cols + (["truth_half_life"] if r.model == "corpus" else [])))
    for _, r in res.choices.iterrows():
        out.update(_flat(f"choice.{r.model}.{r.choice.replace(' ', '_')}", r, ["entropy", "true_entropy", "ratio",
                                                                                     "option_mass"]))
    return out


def findings(res: AgentsResult) -> list[str]:
    """Each finding in one sentence, its positive control beside it."""
    peak = res.probe_peak.set_index("model")
    out = ["Value probe: " + "; ".join(f"{m} R² {r.r2:.3f} [{r.r2_low:.3f}, {r.r2_high:.3f}] at layer {r.peak_layer}"
                                       for m, r in peak.iterrows())
           + ". Control (corpus, next-16-token sea fraction): " + "; ".join(
               f"{m} R² {r.control_r2:.3f} [{r.control_r2_low:.3f}, {r.control_r2_high:.3f}], "
               f"{r.control_share_of_oracle:.0%} of the oracle's {r.oracle_r2:.3f}"
               + ("" if r.control_found else " (NOT found)") for m, r in peak.iterrows()) + "."]
    ent = res.entropy.set_index("model")
    out.append("Next-token entropy (nats): " + "; ".join(f"{m} {r.entropy:.3f} [{r.entropy_low:.3f}, "
                                                         f"{r.entropy_high:.3f}]" for m, r in ent.iterrows())
               + ". Check: entropy / cross-entropy on the stories " + ", ".join(
                   f"{m} {r.entropy_over_cross_entropy:.2f}" for m, r in ent.iterrows())
               + " (1 when calibrated), on each model's own text " + ", ".join(
                   f"{m} {r.own_entropy_over_cross_entropy:.2f}" for m, r in ent.iterrows()) + " (1 in expectation).")
    div = res.diversity.set_index(["model", "temperature"])
    tr = res.temperature_response.set_index("model")
    first = res.temperature_response.model.iloc[0]
    corpus_d2 = div.loc[("corpus", 1.0)]
    at_one = f", {first} at temperature 1 {div.loc[(first, 1.0)].distinct_2:.3f}" if (first, 1.0) in div.index else ""
    out.append("Temperature response of distinct-2: " + "; ".join(
        f"{m} {r.response:+.3f} [{r.response_low:+.3f}, {r.response_high:+.3f}]" for m, r in tr.iterrows())
        + f". Check: the corpus's distinct-2 is {corpus_d2.distinct_2:.3f} [{corpus_d2.distinct_2_low:.3f}, "
        f"{corpus_d2.distinct_2_high:.3f}]{at_one}.")
    ret = res.returns.set_index("model")
    c = ret.loc["corpus"]
    out.append("Displacement by an off-world sentence (share of the sea state lost over 16 tokens): " + "; ".join(
        f"{m} {r.displacement:.2f} [{r.displacement_low:.2f}, {r.displacement_high:.2f}]"
        for m, r in ret.iterrows() if m != "corpus")
        + f". Check: the corpus's gap half-life {c.gap_half_life:.1f} tokens [{c.gap_half_life_low:.1f}, "
        f"{c.gap_half_life_high:.1f}] against the chain's {c.truth_half_life:.1f}, displacement {c.displacement:.2f}.")
    ch = res.choices
    for choice, g in ch.groupby("choice", sort=False):
        g = g.set_index("model")
        out.append(f"Random choice ({choice}, truth ln N = {g.true_entropy.iloc[0]:.3f}): " + "; ".join(
            f"{m} {r.entropy:.3f}" for m, r in g.iterrows() if m != "corpus")
            + f". Check: the corpus's own {g.loc['corpus'].entropy:.3f}.")
    return out
