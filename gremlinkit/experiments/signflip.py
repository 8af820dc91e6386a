"""The Luigi/Waluigi sign-flip search.

Picture a circuit keyed on a value X that was always positive in training and maps +X to good
behaviour +Y. If some prompt drives X negative, the same circuit may produce -Y, the Waluigi,
which is not the same as 0 (no persona at all). This module

1. **finds one-sign units** over a reference distribution (the world's documents): MLP pre-activations
   (``blocks.L.mlp.hook_pre``), SAE pre-activations (after the ReLU a feature cannot change sign)
   and residual directions (the mean direction of each residual-stream state, ``blocks.L.hook_resid_mid``
   and ``blocks.L.hook_resid_post``: the archetype of a value that is positive throughout training),
   ranked by sign consistency (the fraction of positions with the majority sign), then by mean
   magnitude. The statistics are counted chunk by chunk, so a deep model's tens of thousands of
   MLP units fit in memory; a sample of values (the first `SAMPLE_TOKENS` tokens) is kept for plots;
2. **searches for prompts that flip a unit's sign** at the prompt's last token with a GCG-style
   discrete search (the top-k single-token substitutions by the gradient of the unit's value with
   respect to one-hot tokens, ``batch_candidates`` of them evaluated per step in one batch), against
   a random-search baseline that evaluates the same number of random substitutions per step. The
   search minimises ``s * value`` for a unit of majority sign ``s``; the unit is *flipped* once
   that is negative. GCG also spends one backward pass per step, which random search does not.
   Each search records the step of its first flip, so :func:`success_by_budget` compares the two
   methods at every budget from 1 to ``n_steps`` steps, not only at the end;
3. **measures behaviour under the flip** for a trait's direction X (the world's Luigi pole minus
   its Waluigi pole, mean over matched pairs at ``behavior_site``, so +X drives Luigi behaviour; on
   the persona world Luigi is the persona trait's negative pole, elsewhere a trait's positive pole):
   Luigi prompts as they are (+X), with X projected out (0), with X reflected to -X, and with
   searched tokens, inserted before the prompt's last three tokens, that flip X naturally; Waluigi
   prompts are the -Y reference. Y per continuation is the Luigi-word rate minus the Waluigi-word
   rate (the world's trait lexicon); a condition is called -Y, 0 or +Y by whether its 95% bootstrap
   interval over prompts lies below, across or above zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from gremlinkit import worlds
from gremlinkit.errors import ConfigError
from gremlinkit.prompts import encode, host_ids
from gremlinkit.results import Result, to_numpy
from gremlinkit import interventions as iv
from gremlinkit.experiments import personas
from gremlinkit.stats import mean_ci
from gremlinkit.params import Placement, check_range

SAMPLE_TOKENS = 256  # reference tokens whose values are kept per candidate family, for the histograms
CHUNK_VALUES = 2**22  # activation values read per forward pass of the reference documents
UNIT_KINDS = ("mlp", "sae", "direction")
PAIRS_PER_TEMPLATE = 16  # matched pairs per template for the trait direction (generated worlds)


@dataclass(frozen=True)
class SignFlipConfig(Placement):
    model: str = "toy-base"  # zoo name, local model directory or hub id
    sae: str = "auto"  # SAE whose pre-activations are candidates too: "auto" (the model's own), a name, or "none"
    world: str = "auto"  # "auto" (the model's), "persona", "english" or a pairs file
    trait: str = ""  # the trait whose direction is X ("": the world's first)
    n_docs: int = 60  # reference documents for sign statistics
    n_units: int = 5  # one-sign units searched, most consistent first
    # families searched: "auto" (the model's recommended, else all), or of "mlp" (MLP pre-activations),
    # "sae" (SAE pre-activations) and "direction" (residual mean directions)
    unit_kinds: Any = "auto"
    prompt_length: int = 8  # searchable tokens (after the BOS, where the model reads one)
    n_steps: int = 20  # search steps per restart
    batch_candidates: int = 64  # candidate prompts evaluated per step (both methods)
    top_k: int = 32  # GCG: substitutions kept per position, by gradient (of 118 allowed tokens on the zoo)
    n_restarts: int = 2  # random initial prompts per unit and method
    behavior_site: str = "auto"  # where the direction X is read and edited ("auto": a third of the way up)
    n_behavior_prompts: int = 12  # Luigi prompts per behaviour condition
    max_new_tokens: int = 32  # tokens generated per behaviour prompt
    seed: int = 0  # seeds search starts, candidates, sampling and bootstrap
    output_dir: str = "output/02_signflip_search"  # where tables and metrics go

    def __post_init__(self) -> None:
        check_range("n_docs", self.n_docs, 4, 5000)
        check_range("n_units", self.n_units, 1, 100)
        if self.unit_kinds != "auto" and (not isinstance(self.unit_kinds, list) or not self.unit_kinds
                                          or any(k not in UNIT_KINDS for k in self.unit_kinds)):
            raise ConfigError(f"parameter unit_kinds={self.unit_kinds!r}: 'auto', or a list of one or more of "
                              f"{list(UNIT_KINDS)}")
        check_range("prompt_length", self.prompt_length, 1, 64)
        check_range("n_steps", self.n_steps, 1, 2000)
        check_range("batch_candidates", self.batch_candidates, 2, 4096)
        check_range("top_k", self.top_k, 1, 1000)
        check_range("n_restarts", self.n_restarts, 1, 100)
        check_range("n_behavior_prompts", self.n_behavior_prompts, 2, 512)
        check_range("max_new_tokens", self.max_new_tokens, 1, 128)

    @property
    def kinds(self) -> list[str]:
        """The unit families searched: ``unit_kinds``, or for "auto" the model's recommended ones
        (MLP and SAE units on smollm2, whose residual mean directions never go negative), else all."""
        if self.unit_kinds != "auto":
            return list(self.unit_kinds)
        return list(self.recommended("unit_kinds") or UNIT_KINDS)

    def make_world(self) -> worlds.World:
        world = worlds.resolve(self.world, self.model, seed=self.seed, per_template=PAIRS_PER_TEMPLATE)
        if self.trait:
            world.check_traits([self.trait])
        return world

    def studied(self, world: worlds.World) -> str:
        """The trait under study: ``trait``, else the world's first with a Luigi pole or a lexicon,
        else its first."""
        if self.trait:
            return self.trait
        ranked = [t for t in world.traits if t in world.luigi] + [t for t in world.traits if t in world.lexicons]
        return (ranked or world.traits)[0]

    def site(self, subject) -> str:
        """``behavior_site``, or a third of the way up the residual stream ("auto")."""
        if self.behavior_site != "auto":
            return self.behavior_site
        return f"blocks.{subject.site_map.n_layers // 3}.hook_resid_post"

    def load_sae(self):
        return {"auto": None, "none": False}.get(self.sae, self.sae)

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
    return sae.process_sae_in(x.to(sae.W_enc.dtype)) @ sae.W_enc + sae.b_enc  # in the SAE's dtype


def reference_docs(subject, world: worlds.World, n_docs: int, seed: int) -> list[list[int]]:
    """The world's reference documents as ``subject`` reads them (its BOS policy included), each cut
    at the model's context."""
    return [encode(t, subject.tokenizer, subject.prepends_bos)[: subject.n_ctx]
            for t in world.documents(n_docs, 40_000 + seed)]


def _chunks(subject, docs: list[list[int]], sites: list[str]):
    """(site -> (N, d) activations at the real tokens, BOS left out) per chunk of documents, each
    chunk holding at most `CHUNK_VALUES` values over every site (at least one document)."""
    width = sum(a.shape[-1] for a in subject.activations_at([docs[0][:1]], sites).values())
    per_chunk = max(1, CHUNK_VALUES // (width * max(len(d) for d in docs)))
    for i in range(0, len(docs), per_chunk):
        part = docs[i:i + per_chunk]
        keep = subject.batch(part).prompt_mask(skip_bos=True)
        acts = subject.activations_at(part, sites, batch_size=per_chunk)
        yield {site: a[keep] for site, a in acts.items()}


def _counts(v: torch.Tensor) -> torch.Tensor:
    """(4, d): positive count, negative count, sum of |v| and rows of an (N, d) block."""
    return torch.stack([(v > 0).sum(0).double(), (v < 0).sum(0).double(), v.abs().double().sum(0),
                        torch.full((v.shape[1],), float(v.shape[0]), dtype=torch.double, device=v.device)])


@torch.no_grad()
def reference_values(subject, docs: list[list[int]]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                                             dict[str, torch.Tensor]]:
    """Sign statistics of every candidate over the real tokens of ``docs``, in two passes.

    Returns ``(counts, sample, directions)``: per family -- MLP sites, ``"sae"`` and ``"direction"``
    (one column per residual-stream state's mean direction, ``resid_mid`` then ``resid_post`` of
    each block, in the order of ``directions``) -- the `_counts` over every token and the values at
    the first `SAMPLE_TOKENS` tokens; and site -> unit mean direction. Pass one finds the mean
    directions, pass two counts. Only one chunk of documents is in memory at a time.
    """
    n_layers = subject.site_map.n_layers
    mlp_sites = [f"blocks.{L}.mlp.hook_pre" for L in range(n_layers)]
    resid_sites = [f"blocks.{L}.hook_resid_{k}" for L in range(n_layers) for k in ("mid", "post")]
    sums: dict[str, torch.Tensor] = {}
    for acts in _chunks(subject, docs, resid_sites):
        for site, x in acts.items():
            sums[site] = sums.get(site, 0) + x.double().sum(0)
    directions = {site: (v / v.norm()).to(torch.float32) for site, v in sums.items()}
    sae_site = subject.sae_site if subject.sae is not None else None
    counts: dict[str, torch.Tensor] = {}
    sample: dict[str, list[torch.Tensor]] = {}
    for acts in _chunks(subject, docs, mlp_sites + resid_sites + ([sae_site] if sae_site else [])):
        values = {site: acts[site].float() for site in mlp_sites}
        values["direction"] = torch.stack([acts[s].float() @ directions[s].to(acts[s].device) for s in resid_sites], 1)
        if sae_site:
            values["sae"] = _sae_pre(subject, acts[sae_site]).float()
        for key, v in values.items():
            counts[key] = counts[key] + _counts(v) if key in counts else _counts(v)
            kept = sum(len(x) for x in sample.get(key, []))
            if kept < SAMPLE_TOKENS:
                sample.setdefault(key, []).append(v[: SAMPLE_TOKENS - kept].cpu())
    return counts, {k: torch.cat(v) for k, v in sample.items()}, directions


def units_table(counts: dict[str, torch.Tensor], sae_site: str | None, direction_sites: list[str]) -> pd.DataFrame:
    """Every candidate with its sign fractions, ranked by consistency then magnitude, from `_counts`.

    ``counts["direction"]`` has one column per entry of ``direction_sites``.
    """
    frames = []
    for key, c in counts.items():
        c = to_numpy(c)
        n = c[3].clip(min=1)
        pos, neg = c[0] / n, c[1] / n
        kind = key if key in ("sae", "direction") else "mlp"
        site = {"sae": sae_site, "direction": None}.get(key, key)
        sites = list(direction_sites) if kind == "direction" else site
        frames.append(pd.DataFrame({
            "kind": kind, "site": sites, "index": 0 if kind == "direction" else np.arange(c.shape[1]),
            "frac_positive": pos, "frac_negative": neg, "consistency": np.maximum(pos, neg), "mean_abs": c[2] / n,
            "majority_sign": np.where(pos >= neg, 1, -1)}))
    table = pd.concat(frames, ignore_index=True)
    return table.sort_values(["consistency", "mean_abs"], ascending=False, ignore_index=True)


def one_sign_units(values: dict[str, torch.Tensor], sae_site: str | None, direction_sites: list[str]
                   ) -> pd.DataFrame:
    """`units_table` of (N, d) value blocks given whole."""
    return units_table({k: _counts(v) for k, v in values.items()}, sae_site, direction_sites)


# --------------------------------------------------------------------------- 2. the search


def unit_value(subject, unit: Unit, prompts, embeddings: torch.Tensor | None = None,
               interventions=()) -> torch.Tensor:
    """(B,) the unit's value at each prompt's last token (differentiable through ``embeddings``)."""
    acts = subject.activations_at(prompts, [unit.site], interventions, embeddings=embeddings)[unit.site]
    last = acts[torch.arange(acts.shape[0], device=acts.device), subject.batch(prompts).lengths - 1]  # (B, d)
    if unit.kind == "direction":
        return last.float() @ unit.vector.to(last.device)  # read in float32 whatever the model's dtype
    return (_sae_pre(subject, last) if unit.kind == "sae" else last.float())[:, unit.index]


def _bos(subject) -> list[int]:
    return [subject.tokenizer.bos_token_id] if subject.prepends_bos else []


def _allowed(subject) -> torch.Tensor:
    tok = subject.tokenizer
    ok = torch.ones(int(subject.model.config.vocab_size), dtype=torch.bool, device=subject.device)
    ok[[i for i in (tok.bos_token_id, tok.pad_token_id, tok.unk_token_id) if i is not None]] = False
    return ok


def search(subject, unit: Unit, sign: int, method: str, cfg: SignFlipConfig, restart: int,
           prefix: list[int] | None = None, suffix: list[int] | None = None) -> tuple[list[float], list[int]]:
    """Minimise ``sign * value`` over ``prompt_length`` free tokens; returns (best per step, best ids).

    The prompt is ``prefix + free + suffix``, ``prefix`` being the BOS where the subject reads one;
    only the free tokens change.
    """
    gen = torch.Generator().manual_seed(cfg.seed * 10_007 + restart * 101 + unit.index)
    allowed = torch.nonzero(_allowed(subject)).flatten().cpu()  # candidate ids are host-side inputs, as prompts are
    prefix, suffix = _bos(subject) if prefix is None else prefix, suffix or []
    free = allowed[torch.randint(len(allowed), (cfg.prompt_length,), generator=gen, device="cpu")]
    lo, hi = len(prefix), len(prefix) + cfg.prompt_length
    current = host_ids(prefix + free.tolist() + suffix)
    with torch.no_grad():
        best = float(sign * unit_value(subject, unit, [current])[0])
    trace, rows = [], torch.arange(cfg.batch_candidates, device="cpu")  # candidates are host-side, as prompts are
    for _ in range(cfg.n_steps):
        cands = current.repeat(cfg.batch_candidates, 1)  # (B, T)
        where = torch.randint(lo, hi, (cfg.batch_candidates,), generator=gen, device="cpu")
        if method == "gcg":
            oh = subject.one_hot([current]).requires_grad_()
            value = (sign * unit_value(subject, unit, [current], embeddings=subject.embed(oh))).sum()
            # The gradient with respect to the tokens alone: .backward() would also fill a .grad for
            # every weight of the model (as much memory as the model itself) and spend time on it.
            (grad,) = torch.autograd.grad(value, oh)
            grad = grad[0].masked_fill(~_allowed(subject), float("inf"))  # (T, V)
            top = (-grad).topk(cfg.top_k, dim=-1).indices  # (T, k): steepest descent substitutions
            pick = torch.randint(cfg.top_k, (cfg.batch_candidates,), generator=gen, device="cpu")
            cands[rows, where] = top[where.to(top.device), pick.to(top.device)].cpu()
        else:
            swap = torch.randint(len(allowed), (cfg.batch_candidates,), generator=gen, device="cpu")
            cands[rows, where] = allowed[swap]
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
                            "prompt": subject.tokenizer.decode(ids[len(_bos(subject)):])})
    return pd.DataFrame(traj), pd.DataFrame(res)


def success_by_budget(searches: pd.DataFrame, n_steps: int) -> pd.DataFrame:
    """Fraction of searches flipped within each budget of 1..``n_steps`` steps: method, steps, success."""
    rows = []
    for method, g in searches.groupby("method"):
        first = g.steps_to_flip.to_numpy(dtype=float)  # NaN: never flipped
        rows += [{"method": method, "steps": b, "success": float(np.mean(first <= b))} for b in range(1, n_steps + 1)]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- 3. behaviour


def trait_direction(subject, world: worlds.World, trait: str, site: str, seed: int) -> np.ndarray:
    """X: the Luigi pole's mean minus the Waluigi pole's at ``site`` over ``trait``'s matched pairs,
    so +X drives Luigi behaviour."""
    sign = 1.0 if world.luigi_pole(trait) == "positive" else -1.0
    return sign * personas.trait_vector(subject, trait, site, seed, world=world)


def _rates(world: worlds.World, trait: str, text: str) -> dict[str, float]:
    rates = world.lexicon_rates(trait, text)
    luigi = world.luigi_pole(trait)
    waluigi = "negative" if luigi == "positive" else "positive"
    return {"luigi_rate": rates[f"{luigi}_rate"], "waluigi_rate": rates[f"{waluigi}_rate"]}


BEHAVIOR_COLUMNS = ["condition", "prompt_id", "x_at_last_token", "luigi_rate", "waluigi_rate", "y", "continuation"]
CALL_COLUMNS = ["condition", "mean_y", "low", "high", "call", "mean_x", "persona_word_rate"]


def behavior(subject, cfg: SignFlipConfig, world: worlds.World | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-prompt Y under each condition, and the -Y/0/+Y call with its CI."""
    world = world or cfg.make_world()
    trait, site = cfg.studied(world), cfg.site(subject)
    x_dir = torch.as_tensor(trait_direction(subject, world, trait, site, cfg.seed), dtype=torch.float32)
    poles = world.pole_prompts(trait, cfg.n_behavior_prompts, cfg.seed)
    luigi_pole = world.luigi_pole(trait)
    luigi, waluigi = poles[luigi_pole], poles["negative" if luigi_pole == "positive" else "positive"]
    x_unit = Unit("direction", site, vector=x_dir / x_dir.norm())
    natural = [_flip_naturally(subject, x_unit, p, cfg, i) for i, p in enumerate(luigi)]
    conditions = {"+X (Luigi prompt)": (luigi, []), "0 (X projected out)": (luigi, [iv.project_out(x_dir, site)]),
                  "-X (X reflected)": (luigi, [iv.reflect(x_dir, site)]),
                  "-X (searched prompt)": (natural, []), "Waluigi prompt": (waluigi, [])}
    rows = []
    for name, (prompts, edits) in conditions.items():
        seeds = [cfg.seed * 7919 + i for i in range(len(prompts))]
        gen = subject.generate(prompts, cfg.max_new_tokens, edits, seed=seeds)
        with torch.no_grad():
            x_val = unit_value(subject, x_unit, prompts, interventions=edits).tolist()
        for i, text in enumerate(gen.text):
            r = _rates(world, trait, text)
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
    """A Luigi prompt with free tokens inserted before its last three tokens (on the persona world,
    ``name says :``), searched to make X < 0."""
    ids = encode(prompt, subject.tokenizer, bos=False)
    cut = max(1, len(ids) - 3)
    _, best = search(subject, unit, 1, "gcg", cfg, restart=1000 + i, prefix=_bos(subject) + ids[:cut],
                     suffix=ids[cut:])
    return subject.tokenizer.decode(best[len(_bos(subject)):])


# --------------------------------------------------------------------------- the experiment

CALL_VALUE = {"-Y (Waluigi)": -1, "0 (neither)": 0, "+Y (Luigi)": 1}
CONDITION_KEYS = {"+X (Luigi prompt)": "luigi_prompt", "0 (X projected out)": "x_projected_out",
                  "-X (X reflected)": "x_reflected", "-X (searched prompt)": "searched_prompt",
                  "Waluigi prompt": "waluigi_prompt"}


@dataclass
class SignFlipResults(Result):
    units: pd.DataFrame  # every candidate, ranked
    values: dict  # reference values per candidate family at the first SAMPLE_TOKENS tokens, for histograms
    directions: dict  # site -> unit mean direction, in the column order of values["direction"]
    trajectories: pd.DataFrame
    searches: pd.DataFrame
    behavior: pd.DataFrame
    calls: pd.DataFrame
    skipped: list = field(default_factory=list)  # what the run left out, and why (the notebook prints it)
    metrics: dict = field(default_factory=dict)


def run(cfg: SignFlipConfig, subject=None) -> SignFlipResults:
    from gremlinkit import load

    subject = subject or load(cfg.model, sae=cfg.load_sae(), **cfg.load_kwargs())
    subject.site_map.resolve(cfg.site(subject))
    world = cfg.make_world()
    counts, values, directions = reference_values(subject, reference_docs(subject, world, cfg.n_docs, cfg.seed))
    units = units_table(counts, subject.sae_site if subject.sae is not None else None, list(directions))
    searched = units[units.kind.isin(cfg.kinds)].head(cfg.n_units)
    chosen = [(Unit(r.kind, r.site, int(r.index), directions.get(r.site) if r.kind == "direction" else None),
               int(r.majority_sign)) for r in searched.itertuples()]
    trajectories, searches = run_searches(subject, chosen, cfg)
    trait = cfg.studied(world)
    if any(world.lexicons.get(trait, ())):
        per_prompt, calls, skipped = *behavior(subject, cfg, world), []
    else:  # Y is the lexicon's word rate: without a word to count there is nothing to score
        per_prompt, calls = pd.DataFrame(columns=BEHAVIOR_COLUMNS), pd.DataFrame(columns=CALL_COLUMNS)
        skipped = [f"the behaviour (Y): the {world.name} world has no lexicon words for trait {trait!r} to score "
                   "it with"]
    res = SignFlipResults(units, values, directions, trajectories, searches, per_prompt, calls, skipped=skipped)
    res.metrics.update(metrics(res))
    return res


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
        out[f"{key}_mean_x"] = row.mean_x
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
