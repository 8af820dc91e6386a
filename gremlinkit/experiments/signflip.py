"""The Luigi/Waluigi sign-flip search.

Picture a circuit keyed on a value X that was always positive in training and maps +X to good
behaviour +Y. If some prompt drives X negative, the same circuit may produce -Y, the Waluigi,
which is not the same as 0 (no persona at all). This module

1. **finds one-sign units** over a reference distribution (held-out stories): MLP pre-activations
   (``blocks.L.mlp.hook_pre``), SAE pre-activations (after the ReLU a feature cannot change sign)
   and residual directions (the mean direction of each residual-stream state, ``blocks.L.hook_resid_mid``
   and ``blocks.L.hook_resid_post``: the archetype of a value that is positive throughout training),
   ranked by sign consistency (the fraction of positions with the majority sign), then by mean
   magnitude;
2. **searches for prompts that flip a unit's sign** at the prompt's last token with a GCG-style
   discrete search (the top-k single-token substitutions by the gradient of the unit's value with
   respect to one-hot tokens, ``batch_candidates`` of them evaluated per step in one batch), against
   a random-search baseline that evaluates the same number of random substitutions per step. The
   search minimises ``s * value`` for a unit of majority sign ``s``; the unit is *flipped* once
   that is negative. GCG also spends one backward pass per step, which random search does not.
   Each search records the step of its first flip, so :func:`success_by_budget` compares the two
   methods at every budget from 1 to ``n_steps`` steps, not only at the end;
3. **measures behaviour under the flip** for the persona direction X (Luigi minus Waluigi mean at
   ``behavior_site``, so +X drives Luigi behaviour): Luigi prompts as they are (+X), with X
   projected out (0), with X reflected to -X, and with a searched suffix that flips X naturally;
   Waluigi prompts are the -Y reference. Y per continuation is the Luigi-word rate minus the
   Waluigi-word rate (zoo lexicon); a condition is called -Y, 0 or +Y by whether its 95% bootstrap
   interval over prompts lies below, across or above zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from functools import partial

import numpy as np
import pandas as pd
import torch

from gremlinkit.prompts import words_to_ids
from gremlinkit.results import to_numpy
from gremlinkit import interventions as iv
from gremlinkit.experiments import personas
from gremlinkit.stats import mean_ci
from gremlinkit.experiments.zoo_tour import lexicon_rates, persona_prompts
from gremlinkit.params import Placement, check_range
from gremlinkit.zoo import corpus
from gremlinkit.zoo.lm import encode_docs


@dataclass(frozen=True)
class SignFlipConfig(Placement):
    model: str = "toy-base"  # zoo name or local model directory
    n_docs: int = 60  # reference stories for sign statistics
    n_units: int = 5  # one-sign units searched, most consistent first
    prompt_length: int = 8  # searchable tokens after BOS
    n_steps: int = 20  # search steps per restart
    batch_candidates: int = 64  # candidate prompts evaluated per step (both methods)
    top_k: int = 32  # GCG: substitutions kept per position, by gradient (of 118 allowed tokens on the zoo)
    n_restarts: int = 2  # random initial prompts per unit and method
    behavior_site: str = "blocks.1.hook_resid_post"  # where the persona direction X is read and edited
    n_behavior_prompts: int = 12  # Luigi prompts per behaviour condition
    max_new_tokens: int = 32  # tokens generated per behaviour prompt
    seed: int = 0  # seeds search starts, candidates, sampling and bootstrap
    output_dir: str = "output/02_signflip_search"  # where tables and metrics go

    def __post_init__(self) -> None:
        check_range("n_docs", self.n_docs, 4, 5000)
        check_range("n_units", self.n_units, 1, 100)
        check_range("prompt_length", self.prompt_length, 1, 64)
        check_range("n_steps", self.n_steps, 1, 2000)
        check_range("batch_candidates", self.batch_candidates, 2, 4096)
        check_range("top_k", self.top_k, 1, 1000)
        check_range("n_restarts", self.n_restarts, 1, 100)
        check_range("n_behavior_prompts", self.n_behavior_prompts, 2, 512)
        check_range("max_new_tokens", self.max_new_tokens, 1, 128)

    @classmethod
    def smoke(cls) -> "SignFlipConfig":
        return cls(n_docs=24, n_units=3, n_steps=12, batch_candidates=32, n_restarts=1, n_behavior_prompts=4,
                   max_new_tokens=16)


@dataclass(frozen=True, eq=False)
class Unit:
    """A scalar read at one site: an MLP neuron, an SAE pre-activation, or a residual direction."""

    kind: str  # "mlp", "sae" or "direction"
    site: str
    index: int = 0
    vector: torch.Tensor | None = None  # the unit vector of a "direction"

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.site}" if self.kind == "direction" else f"{self.kind}:{self.site}[{self.index}]"


# --------------------------------------------------------------------------- 1. one-sign units


def _sae_pre(subject, x: torch.Tensor) -> torch.Tensor:
    """SAE pre-activations (before the ReLU/TopK), which can take either sign."""
    sae = subject.sae
    return sae.process_sae_in(x) @ sae.W_enc + sae.b_enc


def reference_values(subject, n_docs: int, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Candidate values over the non-BOS tokens of held-out stories, and the residual mean directions.

    Keys: MLP sites (N, d_mlp), ``"sae"`` (N, d_sae) and ``"direction"`` (N, 2 * n_layers), one
    column per residual-stream state's mean direction, in the order of the second return value
    (site -> unit vector): ``resid_mid`` then ``resid_post`` of each block.
    """
    ids = encode_docs(corpus.generate(n_docs, seed=40_000 + seed), subject.tokenizer)
    n_layers = subject.site_map.n_layers
    mlp_sites = [f"blocks.{L}.mlp.hook_pre" for L in range(n_layers)]
    resid_sites = [f"blocks.{L}.hook_resid_{k}" for L in range(n_layers) for k in ("mid", "post")]
    keep = subject.batch(ids).prompt_mask(skip_bos=True)
    out, directions, projections = {}, {}, []
    with torch.no_grad():
        # One site at a time: a padded (B, T, d) read of every site at once would not fit a 2 GB Binder.
        for site in mlp_sites:
            out[site] = subject.activations(ids, site)[keep]
        for site in resid_sites:
            x = subject.activations(ids, site)[keep]
            directions[site] = x.mean(0) / x.mean(0).norm()
            projections.append(x @ directions[site])
        out["direction"] = torch.stack(projections, 1)
        if subject.sae is not None:
            out["sae"] = _sae_pre(subject, subject.activations(ids, subject.sae_site)[keep])
    return out, directions


def one_sign_units(values: dict[str, torch.Tensor], sae_site: str | None, direction_sites: list[str]
                   ) -> pd.DataFrame:
    """Every candidate with its sign fractions, ranked by consistency then magnitude.

    ``values["direction"]`` has one column per entry of ``direction_sites``.
    """
    frames = []
    for key, v in values.items():
        pos, neg = (v > 0).float().mean(0), (v < 0).float().mean(0)
        kind = key if key in ("sae", "direction") else "mlp"
        site = {"sae": sae_site, "direction": None}.get(key, key)
        sites = list(direction_sites) if kind == "direction" else site
        frames.append(pd.DataFrame({
            "kind": kind, "site": sites, "index": 0 if kind == "direction" else np.arange(v.shape[1]),
            "frac_positive": to_numpy(pos), "frac_negative": to_numpy(neg),
            "consistency": to_numpy(torch.maximum(pos, neg)), "mean_abs": to_numpy(v.abs().mean(0)),
            "majority_sign": np.where(to_numpy(pos) >= to_numpy(neg), 1, -1)}))
    table = pd.concat(frames, ignore_index=True)
    return table.sort_values(["consistency", "mean_abs"], ascending=False, ignore_index=True)


# --------------------------------------------------------------------------- 2. the search


def unit_value(subject, unit: Unit, prompts, embeddings: torch.Tensor | None = None,
               interventions=()) -> torch.Tensor:
    """(B,) the unit's value at each prompt's last token (differentiable through ``embeddings``)."""
    acts = subject.activations_at(prompts, [unit.site], interventions, embeddings=embeddings)[unit.site]
    last = acts[torch.arange(acts.shape[0], device=acts.device), subject.batch(prompts).lengths - 1]  # (B, d)
    if unit.kind == "direction":
        return last @ unit.vector
    return (_sae_pre(subject, last) if unit.kind == "sae" else last)[:, unit.index]


def _allowed(subject) -> torch.Tensor:
    tok = subject.tokenizer
    ok = torch.ones(int(subject.model.config.vocab_size), dtype=torch.bool, device=subject.device)
    ok[[i for i in (tok.bos_token_id, tok.pad_token_id, tok.unk_token_id) if i is not None]] = False
    return ok


def search(subject, unit: Unit, sign: int, method: str, cfg: SignFlipConfig, restart: int,
           prefix: list[int] | None = None, suffix: list[int] | None = None) -> tuple[list[float], list[int]]:
    """Minimise ``sign * value`` over ``prompt_length`` free tokens; returns (best per step, best ids).

    The prompt is ``[BOS] + prefix + free + suffix``; only the free tokens change.
    """
    gen = torch.Generator().manual_seed(cfg.seed * 10_007 + restart * 101 + unit.index)
    allowed = torch.nonzero(_allowed(subject)).flatten().cpu()  # candidate ids are host-side inputs, as prompts are
    prefix, suffix = prefix or [subject.tokenizer.bos_token_id], suffix or []
    free = allowed[torch.randint(len(allowed), (cfg.prompt_length,), generator=gen)]
    lo, hi = len(prefix), len(prefix) + cfg.prompt_length
    current = torch.tensor(prefix + free.tolist() + suffix)
    with torch.no_grad():
        best = float(sign * unit_value(subject, unit, [current])[0])
    trace = []
    for _ in range(cfg.n_steps):
        cands = current.repeat(cfg.batch_candidates, 1)  # (B, T)
        where = torch.randint(lo, hi, (cfg.batch_candidates,), generator=gen)
        if method == "gcg":
            oh = subject.one_hot([current]).requires_grad_()
            (sign * unit_value(subject, unit, [current], embeddings=subject.embed(oh))).sum().backward()
            grad = oh.grad[0].masked_fill(~_allowed(subject), float("inf"))  # (T, V)
            top = (-grad).topk(cfg.top_k, dim=-1).indices  # (T, k): steepest descent substitutions
            pick = torch.randint(cfg.top_k, (cfg.batch_candidates,), generator=gen)
            cands[torch.arange(cfg.batch_candidates), where] = top[where.to(top.device), pick.to(top.device)].cpu()
        else:
            cands[torch.arange(cfg.batch_candidates), where] = allowed[
                torch.randint(len(allowed), (cfg.batch_candidates,), generator=gen)]
        with torch.no_grad():
            scores = sign * unit_value(subject, unit, cands)
        k = int(scores.argmin())
        if float(scores[k]) < best:
            best, current = float(scores[k]), cands[k].clone()
        trace.append(best)
    return trace, current.tolist()


def run_searches(subject, units: list[tuple[Unit, int]], cfg: SignFlipConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Trajectories (unit, method, restart, step, best) and results (flipped, first flipping step, prompt)."""
    traj, res = [], []
    for unit, sign in units:
        for method in ("gcg", "random"):
            for r in range(cfg.n_restarts):
                trace, ids = search(subject, unit, sign, method, cfg, r)
                traj += [{"unit": unit.name, "method": method, "restart": r, "step": s + 1, "best": b}
                         for s, b in enumerate(trace)]
                first = next((s + 1 for s, b in enumerate(trace) if b < 0), None)
                res.append({"unit": unit.name, "method": method, "restart": r, "best": trace[-1],
                            "flipped": trace[-1] < 0, "steps_to_flip": first,
                            "prompt": subject.tokenizer.decode(ids[1:])})
    return pd.DataFrame(traj), pd.DataFrame(res)


def success_by_budget(searches: pd.DataFrame, n_steps: int) -> pd.DataFrame:
    """Fraction of searches flipped within each budget of 1..``n_steps`` steps: method, steps, success."""
    rows = []
    for method, g in searches.groupby("method"):
        first = g.steps_to_flip.to_numpy(dtype=float)  # NaN: never flipped
        rows += [{"method": method, "steps": b, "success": float(np.mean(first <= b))} for b in range(1, n_steps + 1)]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- 3. behaviour


def persona_direction(subject, site: str, seed: int) -> np.ndarray:
    """Luigi minus Waluigi mean at ``site`` over matched persona pairs: +X drives Luigi behaviour."""
    return -personas.trait_vector(subject, "persona", site, seed)


def behavior(subject, cfg: SignFlipConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-prompt Y under each condition, and the -Y/0/+Y call with its CI."""
    x_dir = torch.as_tensor(persona_direction(subject, cfg.behavior_site, cfg.seed), dtype=torch.float32)
    table = persona_prompts(cfg.n_behavior_prompts, cfg.seed)
    luigi = table[table.persona == "luigi"].prompt.tolist()
    waluigi = table[table.persona == "waluigi"].prompt.tolist()
    x_unit = Unit("direction", cfg.behavior_site, vector=x_dir / x_dir.norm())
    natural = [_flip_naturally(subject, x_unit, p, cfg, i) for i, p in enumerate(luigi)]
    conditions = {"+X (Luigi prompt)": (luigi, []), "0 (X projected out)": (luigi, [iv.project_out(x_dir, cfg.behavior_site)]),
                  "-X (X reflected)": (luigi, [iv.reflect(x_dir, cfg.behavior_site)]),
                  "-X (searched prompt)": (natural, []), "Waluigi prompt": (waluigi, [])}
    rows = []
    for name, (prompts, edits) in conditions.items():
        seeds = [cfg.seed * 7919 + i for i in range(len(prompts))]
        gen = subject.generate(prompts, cfg.max_new_tokens, edits, seed=seeds)
        with torch.no_grad():
            x_val = unit_value(subject, x_unit, prompts, interventions=edits).tolist()
        for i, text in enumerate(gen.text):
            r = lexicon_rates(text)
            rows.append({"condition": name, "prompt_id": i, "x_at_last_token": x_val[i], **r,
                         "y": r["luigi_rate"] - r["waluigi_rate"], "continuation": text})
    per_prompt = pd.DataFrame(rows)
    calls = []
    for name, g in per_prompt.groupby("condition", sort=False):
        low, high = mean_ci(g.y.to_numpy(), cfg.seed)
        call = "-Y (Waluigi)" if high < 0 else "+Y (Luigi)" if low > 0 else "0 (neither)"
        calls.append({"condition": name, "mean_y": float(g.y.mean()), "low": low, "high": high, "call": call,
                      "mean_x": float(g.x_at_last_token.mean()),
                      "persona_word_rate": float((g.luigi_rate + g.waluigi_rate).mean())})
    return per_prompt, pd.DataFrame(calls)


def _flip_naturally(subject, unit: Unit, prompt: str, cfg: SignFlipConfig, i: int) -> str:
    """A Luigi prompt with free tokens inserted before its final ``name says :``, searched to make X < 0."""
    words = prompt.split()
    head, tail = words[:-3], words[-3:]  # "... ." | "name says :"
    ids = partial(words_to_ids, subject.tokenizer)
    _, best = search(subject, unit, 1, "gcg", cfg, restart=1000 + i,
                     prefix=[subject.tokenizer.bos_token_id] + ids(head), suffix=ids(tail))
    return subject.tokenizer.decode(best[1:])


# --------------------------------------------------------------------------- the experiment

CALL_VALUE = {"-Y (Waluigi)": -1, "0 (neither)": 0, "+Y (Luigi)": 1}
CONDITION_KEYS = {"+X (Luigi prompt)": "luigi_prompt", "0 (X projected out)": "x_projected_out",
                  "-X (X reflected)": "x_reflected", "-X (searched prompt)": "searched_prompt",
                  "Waluigi prompt": "waluigi_prompt"}


@dataclass
class SignFlipResults:
    units: pd.DataFrame  # every candidate, ranked
    values: dict  # reference values per candidate family, for the sign histograms
    directions: dict  # site -> unit mean direction, in the column order of values["direction"]
    trajectories: pd.DataFrame
    searches: pd.DataFrame
    behavior: pd.DataFrame
    calls: pd.DataFrame


def run(cfg: SignFlipConfig, subject=None) -> SignFlipResults:
    from gremlinkit import load

    subject = subject or load(cfg.model, **cfg.load_kwargs())
    subject.site_map.resolve(cfg.behavior_site)
    values, directions = reference_values(subject, cfg.n_docs, cfg.seed)
    units = one_sign_units(values, subject.sae_site if subject.sae is not None else None, list(directions))
    chosen = [(Unit(r.kind, r.site, int(r.index), directions.get(r.site) if r.kind == "direction" else None),
               int(r.majority_sign)) for r in units.head(cfg.n_units).itertuples()]
    trajectories, searches = run_searches(subject, chosen, cfg)
    per_prompt, calls = behavior(subject, cfg)
    return SignFlipResults(units, values, directions, trajectories, searches, per_prompt, calls)


def metrics(res: SignFlipResults) -> dict[str, float]:
    flips = res.searches.groupby("method").flipped.sum()
    final = res.searches.groupby("method").best.mean()
    # Steps to the first flip, an unflipped search counted as one step past the budget.
    steps = res.searches.steps_to_flip.fillna(res.trajectories.step.max() + 1).groupby(res.searches.method).mean()
    out = {"one_sign_units_99": int((res.units.consistency >= 0.99).sum()),
           "top_unit_consistency": float(res.units.consistency.iloc[0]),
           "gcg_flips": int(flips.get("gcg", 0)), "random_flips": int(flips.get("random", 0)),
           "gcg_mean_final": float(final.get("gcg", np.nan)), "random_mean_final": float(final.get("random", np.nan)),
           "gcg_mean_steps_to_flip": float(steps.get("gcg", np.nan)),
           "random_mean_steps_to_flip": float(steps.get("random", np.nan))}
    for row in res.calls.itertuples():
        key = CONDITION_KEYS[row.condition]
        out[f"{key}_call"] = CALL_VALUE[row.call]
        out[f"{key}_mean_y"] = row.mean_y
    return out


def unit_values(res: SignFlipResults, n: int) -> pd.DataFrame:
    """Long table (unit, value) of the ``n`` top-ranked units' reference values, for histograms."""
    frames = []
    for r in res.units.head(n).itertuples():
        if r.kind == "direction":
            column = res.values["direction"][:, list(res.directions).index(r.site)]
        else:
            column = res.values["sae" if r.kind == "sae" else r.site][:, r.index]
        frames.append(pd.DataFrame({"unit": Unit(r.kind, r.site, int(r.index)).name, "value": to_numpy(column)}))
    return pd.concat(frames, ignore_index=True)
