"""Controls where nothing is planted: a topic feature with a measured truth, and random directions.

On a real model no persistence is planted, so a census's power and its false positives must come
from controls that the model itself provides. Notebook 04 (`gremlins`) runs both beside its census.

**The natural control, with a measured truth.** The SAE feature that best marks one topic (sea) in
the English stories (`gremlinkit.stories`), chosen by the stories' sentence labels before any scan
(`topic_feature`). Its truth is a *text edit*: one story opening ended once by a neutral sentence
and once by a sea sentence (`stories.text_edits`), each continued by the model with the same
sampling noise. How long the feature stays raised in the sea run's continuation, against the
neutral run's, is how long the model itself keeps the topic. The *feature edit* is the census's own
edit: the neutral opening with the feature pushed at its last token, read the same way. Both go
through the census's summary (`persistence.summarize`): a half-life with a bootstrap interval over
prompts, and the tail test. The control gives the census power when, in the base model, the feature
edit is detected at the census's bar and its half-life is within ``HALF_LIFE_TOLERANCE`` (50%) of
the truth's. The fine-tunes were trained towards sea words, so in them both are reported, not required.

**The sentence steer.** Where the feature edit does not make the model take the topic up, it says
nothing about whether the census's read could see persistence. The sentence steer asks that: the
neutral sentence's every token gets `STEER_COEFF` times the topic's direction (`topic_direction`:
topic sentences' mean residual minus neutral sentences', on openings no control uses) at an early
layer (`steer_site`), and the feature is read as for the other two. It is reported beside them, not
required.

**The random-direction null.** ``n`` random unit directions at the SAE's site, each pushed at the
census's own edit positions with the norm of the feature edit (``scale`` times the feature's decoder
norm), and read as the census reads a feature: the projection on the direction, edited run minus
unedited run. No direction was chosen for anything, so the share that the census's rule detects is
its false-positive rate on this model; it must be at most ``MAX_NULL_RATE`` (5%).
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import binomtest

from gremlinkit import interventions as iv
from gremlinkit import stories
from gremlinkit.experiments import persistence
from gremlinkit.prompts import encode, host_ids
from gremlinkit.results import to_numpy
from gremlinkit.subject import FEATURE_RECORDS

STEER_DEPTH = 1 / 15  # the sentence steer's layer, as a share of the model's depth (smollm2-135m: 2 of 30)
STEER_COEFF = 4.0  # and its size, in multiples of the topic's direction (sea minus neutral sentences)
HALF_LIFE_TOLERANCE = 0.5  # the feature edit's half-life must be within this share of the truth's
MAX_NULL_RATE = 0.05  # the random-direction null may be detected in at most this share of directions
COLUMNS = ["model", "role", "feature", "half_life", "half_life_lo", "half_life_hi", "half_life_censored",
           "effect_lag0", "tail_effect", "p_value", "detected", "prevalence_delta", "word_rate_delta", "divergence"]


def topic_feature(subject, topic: str = stories.REWARD_TOPIC, n_docs: int = 120, seed: int = 0) -> int:
    """The SAE feature that best marks ``topic``'s sentences in ``n_docs`` English stories, by their
    labels (`persistence.best_marker`); the stories are drawn with their own seed, not the scan's."""
    stories._check_topic(topic)
    rng, bos = random.Random(f"topic-feature-{seed}"), subject.tokenizer.bos_token_id
    ids, labels = [], []
    for _ in range(n_docs):
        doc = [bos] if subject.prepends_bos else []
        for k, (text, t) in enumerate(zip(*stories.story(rng, 8))):
            piece = subject.tokenizer((" " if k else "") + text, add_special_tokens=False)["input_ids"]
            doc += piece
            labels += [t] * len(piece)
        ids.append(host_ids(doc))
    on, kept = [], []
    for start in range(0, n_docs, 16):  # a few documents at a time: only which features are on is kept
        part = ids[start: start + 16]
        # the labels cover every token but a BOS; the statistics count `Subject.counted`'s tokens
        every, counted = subject.batch(part).prompt_mask(skip_bos=True), subject.counted(part)
        on.append(to_numpy(subject.features(part)[counted] > 0))  # (tokens, d_sae)
        kept.append(to_numpy(counted[every]))
    return persistence.best_marker(np.concatenate(on), (np.array(labels) == topic)[np.concatenate(kept)])


def text_edit_prompts(subject, n: int, seed: int, topic: str = stories.REWARD_TOPIC
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``n`` story openings as ``subject`` reads them: each ended by a neutral sentence, and the same
    opening ended by a ``topic`` sentence."""
    triples = stories.text_edits(n, 30_000 + seed, topic)

    def ids(text: str) -> torch.Tensor:
        return host_ids(encode(text, subject.tokenizer, subject.prepends_bos))

    return [ids(f"{o} {neutral}") for o, neutral, _ in triples], [ids(f"{o} {edited}") for o, _, edited in triples]


def _sentence_starts(subject, n: int, seed: int, topic: str) -> list[int]:
    """Where the last sentence starts in each of `text_edit_prompts`'s prompts (after the opening)."""
    return [len(encode(o, subject.tokenizer, subject.prepends_bos)) for o, _, _ in stories.text_edits(n, 30_000 + seed,
                                                                                                       topic)]


def neutral_spans(subject, n: int, seed: int, topic: str = stories.REWARD_TOPIC) -> list[list[int]]:
    """The positions of each neutral sentence in `text_edit_prompts`'s neutral prompts."""
    neutral, _ = text_edit_prompts(subject, n, seed, topic)
    return [list(range(k, len(p))) for k, p in zip(_sentence_starts(subject, n, seed, topic), neutral)]


@torch.no_grad()
def topic_direction(subject, site: str, n: int = 64, seed: int = 0, topic: str = stories.REWARD_TOPIC
                    ) -> torch.Tensor:
    """(d,) on the subject's device: the mean residual at ``site`` over a ``topic`` sentence's tokens
    minus the mean over a neutral sentence's, each ending the same ``n`` story openings. The
    openings are drawn with their own seed, apart from the controls'."""
    held = 61_000 + seed  # text_edit_prompts adds 30_000 to its seed: openings no control uses
    starts = _sentence_starts(subject, n, held, topic)
    means = []
    for prompts in text_edit_prompts(subject, n, held, topic)[::-1]:  # the topic's sentences, then the neutral
        acts = subject.activations(prompts, site).float()  # (n, pos, d) in prompt indexing
        means.append(torch.cat([acts[r, k: len(p)] for r, (k, p) in enumerate(zip(starts, prompts))]).mean(0))
    return means[0] - means[1]


def steer_site(subject) -> str:
    """The sentence steer's site: the residual stream at `STEER_DEPTH` of the model's depth."""
    return f"blocks.{max(1, round(subject.site_map.n_layers * STEER_DEPTH))}.hook_resid_pre"


def _seeds(seed: int, rows: Sequence[int]) -> list[int]:
    return [seed * 1_000_003 + r * 1009 for r in rows]  # an edited run and its pair share a stream


@torch.no_grad()
def _run(subject, prompts: list[torch.Tensor], read, horizon: int, seeds: list[int], temperature: float,
         edits: Sequence[iv.Intervention] = (), record: Sequence[str] = FEATURE_RECORDS) -> dict[str, torch.Tensor]:
    """Generate ``horizon`` tokens after each prompt (its last token is lag 0) and keep
    ``read(records)``: {"pre", "post"} each (rows, horizon + 1), plus the ``tokens``."""
    out = subject.generate(prompts, horizon + 1, edits, seed=seeds, temperature=temperature, record=record)
    return {**read(out.records), "tokens": out.tokens}


def _pair_table(model: str, units: list[tuple[int, int, int]], base: dict, edited: dict) -> pd.DataFrame:
    edited = {**edited, "diverged": (edited["tokens"] != base["tokens"]).any(1)}
    return persistence.long_table(model, "on_policy", units, base, edited, record_all=False)


def feature_controls(subject, model: str, feature: int, scale: float, n_prompts: int, horizon: int, seed: int,
                     temperature: float = 1.0, chunk_size: int = 64, topic: str = stories.REWARD_TOPIC,
                     steer: tuple[str, float] | None = None) -> dict[str, pd.DataFrame]:
    """The text edit (the truth) and the feature edit, each paired with the neutral run: two tables
    in `persistence.COLUMNS`, keyed by role. With ``steer=(site, coeff)`` a third, "sentence steer":
    ``coeff`` times the topic's direction at ``site`` (`topic_direction`) added at every token of the
    neutral sentence, which stands where the text edit writes a topic sentence; read the same way."""
    neutral, edited = text_edit_prompts(subject, n_prompts, seed, topic)
    spans = neutral_spans(subject, n_prompts, seed, topic) if steer else []
    direction = topic_direction(subject, steer[0], seed=seed, topic=topic) if steer else None

    def read(records: dict) -> dict:
        return {"pre": records["features_pre"][:, :, feature], "post": records["features"][:, :, feature]}

    tables: dict[str, list] = {"text edit": [], "feature edit": [], **({"sentence steer": []} if steer else {})}
    for start in range(0, n_prompts, chunk_size):
        rows = list(range(start, min(start + chunk_size, n_prompts)))
        seeds = _seeds(seed, rows)
        base = _run(subject, [neutral[r] for r in rows], read, horizon, seeds, temperature)
        truth = _run(subject, [edited[r] for r in rows], read, horizon, seeds, temperature)
        push = _run(subject, [neutral[r] for r in rows], read, horizon, seeds, temperature,
                    [iv.add(feature, scale, pos=-1)])
        tables["text edit"].append(_pair_table(model, [(feature, r, len(edited[r]) - 1) for r in rows], base, truth))
        tables["feature edit"].append(_pair_table(model, [(feature, r, len(neutral[r]) - 1) for r in rows], base,
                                                  push))
        if steer:
            steered = _run(subject, [neutral[r] for r in rows], read, horizon, seeds, temperature,
                           [iv.steer(direction, steer[1], steer[0], pos=[spans[r] for r in rows])])
            tables["sentence steer"].append(_pair_table(model, [(feature, r, len(neutral[r]) - 1) for r in rows],
                                                        base, steered))
    return {role: pd.concat(parts, ignore_index=True) for role, parts in tables.items()}


def random_directions(n: int, d_model: int, seed: int) -> torch.Tensor:
    """(n, d_model) random unit directions, drawn on the host from ``seed``."""
    # on the host, so a seed means the same directions on every device; `direction_null` moves them
    dirs = torch.randn(n, d_model, generator=torch.Generator().manual_seed(70_000 + seed), device="cpu")
    return dirs / dirs.norm(dim=1, keepdim=True)


def direction_null(subject, model: str, prompts: list[torch.Tensor], positions: list[int], directions: torch.Tensor,
                   norm: float, horizon: int, seed: int, temperature: float = 1.0, chunk_size: int = 64
                   ) -> pd.DataFrame:
    """Each direction pushed with ``norm`` at each prompt's edit position, read as its projection,
    against the unedited run: one table in `persistence.COLUMNS`, ``feature`` = the direction's index."""
    site = subject.sae_site
    dirs = directions.to(subject.device)  # (K, d)
    cut = [p[: pos + 1] for p, pos in zip(prompts, positions)]
    seeds = _seeds(seed, range(len(cut)))

    def project(records: dict) -> dict:
        x = records[site].float() @ dirs.T  # (rows, lags, K)
        return {"pre": x, "post": x}

    base = _run(subject, cut, project, horizon, seeds, temperature, record=[site])
    units = [(k, p, pos) for k in range(len(dirs)) for p, pos in enumerate(positions)]
    parts = []
    for start in range(0, len(units), chunk_size):
        chunk = units[start: start + chunk_size]
        edits = [iv.steer(directions[k], norm, site, pos=-1, rows=r) for r, (k, _, _) in enumerate(chunk)]
        pushed = _run(subject, [cut[p] for _, p, _ in chunk], project, horizon, [seeds[p] for _, p, _ in chunk],
                      temperature, edits, record=[site])
        rows = torch.arange(len(chunk), device=subject.device)
        own = torch.tensor([k for k, _, _ in chunk], device=subject.device)
        prompt_rows = torch.tensor([p for _, p, _ in chunk], device=subject.device)
        paired = {k: base[k][prompt_rows, :, own] for k in ("pre", "post")}  # each (rows, lags)
        paired["tokens"] = base["tokens"][prompt_rows]
        mine = {k: pushed[k][rows, :, own] for k in ("pre", "post")}
        parts.append(_pair_table(model, chunk, paired, {**mine, "tokens": pushed["tokens"]}))
    return pd.concat(parts, ignore_index=True)


def summarize(tables: dict[str, pd.DataFrame], bar: float, words: list[int], n_bootstrap: int, seed: int
              ) -> pd.DataFrame:
    """One row per (model, role, feature) in `COLUMNS`: the census's summary of each control (its
    half-life and tail test), ``detected`` when its p-value clears ``bar`` (the census's), and the
    behavioural form (`persistence.behaviour`) where the horizon reaches its window."""
    out = []
    for role, table in tables.items():
        summary = persistence.summarize(table, n_bootstrap, seed).drop(columns=["q_value", "persistent"])
        if table.lag.max() >= persistence.BEHAVIOUR_WINDOW[1]:
            summary = summary.merge(persistence.behaviour(table, words)[["model", "feature", "prevalence_delta",
                                                                         "word_rate_delta"]],
                                    on=["model", "feature"], how="left")
        out.append(summary.assign(role=role, detected=summary.p_value <= bar))
    table = pd.concat(out, ignore_index=True).astype({"model": str}).rename(
        columns={"half_life_low": "half_life_lo", "half_life_high": "half_life_hi"})
    return table.reindex(columns=COLUMNS)


def power(controls: pd.DataFrame, base: str) -> dict[str, Any]:
    """The controls' figures in ``base``: the truth's and the feature edit's half-lives, whether the
    edit is detected and within tolerance of the truth (where a text edit ran), and the null's
    detection rate (Wilson 95%)."""
    own = controls[controls.model == base]
    null = own[own.role == "random direction"]
    out: dict[str, Any] = {"random_directions": len(null)}
    if "text edit" in set(own.role):
        truth, edit = (own[own.role == r].iloc[0] for r in ("text edit", "feature edit"))
        within = bool(abs(edit.half_life - truth.half_life) <= HALF_LIFE_TOLERANCE * truth.half_life)
        out.update({"natural_control_feature": int(edit.feature), "natural_control_truth": float(truth.half_life),
                    "natural_control_truth_low": float(truth.half_life_lo),
                    "natural_control_truth_high": float(truth.half_life_hi),
                    "natural_control_truth_detected": int(truth.detected),
                    "natural_control_half_life": float(edit.half_life),
                    "natural_control_half_life_low": float(edit.half_life_lo),
                    "natural_control_half_life_high": float(edit.half_life_hi),
                    "natural_control_detected": int(edit.detected), "natural_control_within_tolerance": int(within)})
    if "sentence steer" in set(own.role):
        steer = own[own.role == "sentence steer"].iloc[0]
        out.update({"natural_control_steer_half_life": float(steer.half_life),
                    "natural_control_steer_half_life_low": float(steer.half_life_lo),
                    "natural_control_steer_half_life_high": float(steer.half_life_hi),
                    "natural_control_steer_tail_effect": float(steer.tail_effect),
                    "natural_control_steer_detected": int(steer.detected),
                    "natural_control_steer_word_rate_delta": float(steer.word_rate_delta)})
    if len(null):
        k = int(null.detected.sum())
        ci = binomtest(k, len(null)).proportion_ci(method="wilson")
        out.update(random_direction_rate=k / len(null), random_direction_rate_low=float(ci.low),
                   random_direction_rate_high=float(ci.high))
    return out


def no_power_reasons(figures: dict[str, Any]) -> list[str]:
    """Why the controls leave the census without power (empty when they do not)."""
    why = []
    if "natural_control_detected" not in figures:  # a null alone (the control's truth is planted elsewhere)
        pass
    elif not figures["natural_control_detected"]:
        why.append("the natural control's feature edit is not found persistent in the base model")
    elif not figures["natural_control_within_tolerance"]:
        why.append(f"the natural control's half-life ({figures['natural_control_half_life']:.1f} tokens) is not "
                   f"within {HALF_LIFE_TOLERANCE:.0%} of its text-edit truth "
                   f"({figures['natural_control_truth']:.1f} tokens)")
    rate = figures.get("random_direction_rate", 0.0)
    if rate > MAX_NULL_RATE:
        why.append(f"the random-direction null is detected in {rate:.0%} of {figures['random_directions']} directions "
                   f"(at most {MAX_NULL_RATE:.0%} allowed)")
    return why


def describe(figures: dict[str, Any]) -> str:
    """The controls' figures as the verdict quotes them ("" without any)."""
    out = ""
    if "natural_control_truth" in figures:
        f = figures
        out += (f" Natural control (feature {f['natural_control_feature']}): half-life "
                f"{f['natural_control_half_life']:.1f} tokens (95% CI {f['natural_control_half_life_low']:.1f}-"
                f"{f['natural_control_half_life_high']:.1f}), "
                f"{'detected' if f['natural_control_detected'] else 'not detected'}, against its text-edit truth of "
                f"{f['natural_control_truth']:.1f} tokens ({f['natural_control_truth_low']:.1f}-"
                f"{f['natural_control_truth_high']:.1f}).")
    if "natural_control_steer_half_life" in figures:
        f = figures
        out += (f" A neutral sentence steered toward the topic: half-life {f['natural_control_steer_half_life']:.1f} "
                f"tokens ({f['natural_control_steer_half_life_low']:.1f}-{f['natural_control_steer_half_life_high']:.1f}"
                f"), {'detected' if f['natural_control_steer_detected'] else 'not detected'}.")
    if figures.get("random_directions"):
        out += (f" Random-direction null: {figures['random_direction_rate']:.0%} of {figures['random_directions']} "
                f"directions detected (95% CI {figures['random_direction_rate_low']:.0%}-"
                f"{figures['random_direction_rate_high']:.0%}).")
    return out


REPAIR_COLUMNS = ["model", "role", "unit", "prompt", "edit_norm", "survival", "logit_ratio"]


@torch.no_grad()
def self_repair(subject, model: str, prompts: list[torch.Tensor], positions: list[int], features: Sequence[int],
                scale: float, directions: torch.Tensor, norm: float, chunk_size: int = 8) -> pd.DataFrame:
    """Each census edit (``features`` pushed by ``scale``) and each random direction (pushed with
    ``norm``), made at its prompt's edit position and read there, teacher-forced, twice: at the
    final norm's input and at the logits. ``survival`` is the share of the edit's change at its
    site that reaches the final norm's input along itself (1: untouched by the later layers; below
    1: they undo it, which is self-repair); ``logit_ratio`` is the change in the logits as a share
    of the *direct* change (the site's change added at the final norm's input instead, so no later
    layer can react). One row per edit and prompt, in `REPAIR_COLUMNS`."""
    site, final = subject.sae_site, f"blocks.{subject.site_map.n_layers - 1}.hook_resid_post"
    cut = [p[: pos + 1] for p, pos in zip(prompts, positions)]  # each edit at its prompt's last token

    def last(x: torch.Tensor, rows: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([x[r, len(p) - 1] for r, p in enumerate(rows)]).float()

    clean = {k: last(v, cut) for k, v in subject.activations_at(cut, [site, final]).items()}
    clean_logits = subject.run(cut, last=True).float()
    units = [("feature", f, p) for f in features for p in range(len(cut))]
    units += [("random direction", k, p) for k in range(len(directions)) for p in range(len(cut))]
    rows = []
    for start in range(0, len(units), chunk_size):
        chunk = units[start: start + chunk_size]
        part = [cut[p] for _, _, p in chunk]
        own = torch.tensor([p for _, _, p in chunk], device=clean_logits.device)
        edits = [iv.add(u, scale, pos=-1, rows=r) if role == "feature" else
                 iv.steer(directions[u], norm, site, pos=-1, rows=r) for r, (role, u, _) in enumerate(chunk)]
        acts = subject.activations_at(part, [site, final], edits)
        d_site, d_final = (last(acts[k], part) - clean[k][own] for k in (site, final))
        d_logits = subject.run(part, edits, last=True).float() - clean_logits[own]
        direct = [iv.steer(d_site[r], 1.0, final, pos=-1, rows=r) for r in range(len(chunk))]
        d_direct = subject.run(part, direct, last=True).float() - clean_logits[own]
        survival = (d_final * d_site).sum(1) / d_site.pow(2).sum(1)
        ratio = (d_logits * d_direct).sum(1) / d_direct.pow(2).sum(1)
        rows += [{"model": model, "role": role, "unit": int(u), "prompt": int(p), "edit_norm": float(n),
                  "survival": float(s), "logit_ratio": float(q)}
                 for (role, u, p), n, s, q in zip(chunk, d_site.norm(dim=1).tolist(), survival.tolist(),
                                                  ratio.tolist())]
    return pd.DataFrame(rows, columns=REPAIR_COLUMNS)


def repair_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per model and role: the median survival and logit ratio over edits (each edit's mean over
    its prompts), with their interquartile range."""
    per_edit = table.groupby(["model", "role", "unit"], sort=False)[["survival", "logit_ratio"]].mean().reset_index()
    g = per_edit.groupby(["model", "role"], sort=False)
    out = g.median(numeric_only=True).drop(columns="unit")
    for q, name in ((0.25, "q1"), (0.75, "q3")):
        out = out.join(g[["survival", "logit_ratio"]].quantile(q).add_suffix(f"_{name}"))
    return out.join(g.size().rename("edits")).reset_index()
