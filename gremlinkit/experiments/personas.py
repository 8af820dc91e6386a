"""Persona probes: find trait directions in the residual stream, score them against truth, steer.

Simulator theory says a model keeps a space of characters, with directions for traits. A *trait*
is defined by its world's matched pairs of prompts that differ only in that trait (see
`gremlinkit.worlds`): in the zoo's persona world, Luigi vs Waluigi (``persona``), sailor vs formal
(``register``) and old vs young (``age``); in the English world, kind vs cruel, honest vs deceptive
and formal vs casual; or a user's file of pairs. For every site ``blocks.{L}.hook_resid_post`` the
last-token activations give

* a difference-of-means vector (positive pole minus negative pole, as in persona-vector work), and
* a logistic-regression probe (scikit-learn),

both fitted on some prompt templates and scored on the world's held-out templates, so a probe
cannot memorise a template. Reported per trait, site and method: the AUROC pooled over the
held-out templates (``auroc_pooled``: one threshold for every prompt, the figure a user relies on),
the AUROC within each held-out template, averaged (``auroc_within_template``: a template can move
every prompt along the direction by its own offset), and the fraction of matched pairs ordered
correctly (``paired_accuracy``). Also: the cosine between the two directions, cosines between
traits (the zoo's traits are drawn independently, so their directions should be near-orthogonal),
and, where the world gives neutral prompts (the persona world), the persona-axis cosine
``cos(mu_W - mu_0, mu_L - mu_0)``: near -1 puts Luigi and Waluigi at two ends of one axis through
the neutral state.

**Steering.** Adding ``coeff * v`` (``v`` = the trait's positive-minus-negative mean at
``steer_site``) at every position while the world's generation prompts continue should raise the
rate of the trait's positive-pole words with ``coeff``. Scored with the world's lexicon (no judge
model), with bootstrap CIs over prompts; plus, where the world gives next-token choices, the logit
shift in nats toward the positive word, and the coherence cost: the unsteered model's loss on the
steered text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression

from gremlinkit import interventions as iv
from gremlinkit import stats, worlds
from gremlinkit.errors import ConfigError
from gremlinkit.params import Placement, check_range
from gremlinkit.prompts import host_ids, words_to_ids
from gremlinkit.results import Result, to_numpy

@dataclass(frozen=True)
class PersonaConfig(Placement):
    model: str = "toy-base"  # zoo name, local model directory or hub id
    world: str = "auto"  # "auto" (persona for zoo models, english otherwise), "persona", "english", or a .csv/.jsonl file of pairs
    traits: list = field(default_factory=list)  # traits to probe (empty: every trait of the world)
    trait: str = ""  # the trait under study: headline metrics and steering (empty: the world's first)
    pairs_per_template: int = 24  # matched pairs per template, in a generated world (persona)
    steer_site: str = "auto"  # where the trait vector is added ("auto": where the trait is best decoded)
    coefficients: list = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 1.5, 2.0])  # steering sweep
    n_prompts: int = 16  # generation prompts steered
    max_new_tokens: int = 40  # tokens generated per steered prompt
    seed: int = 0  # seeds pairs, prompts, sampling noise and bootstrap
    output_dir: str = "output/01_persona_probes"  # where tables and metrics go

    def __post_init__(self) -> None:
        check_range("pairs_per_template", self.pairs_per_template, 2, 1000)
        check_range("n_prompts", self.n_prompts, 1, 512)
        check_range("max_new_tokens", self.max_new_tokens, 1, 128)
        if not self.coefficients or sorted(self.coefficients) != list(self.coefficients):
            raise ConfigError(f"parameter coefficients={self.coefficients!r} must be a non-empty increasing list")

    @classmethod
    def smoke(cls) -> "PersonaConfig":
        return cls(pairs_per_template=8, coefficients=[0.0, 1.0, 2.0], n_prompts=6, max_new_tokens=24)

    def make_world(self) -> worlds.World:
        """The world this config names, with its traits checked."""
        world = worlds.resolve(self.world, self.model, seed=self.seed, per_template=self.pairs_per_template)
        world.check_traits(list(self.traits) + ([self.trait] if self.trait else []))
        return world

    def studied(self, world: worlds.World) -> str:
        return self.trait or (list(self.traits) or world.traits)[0]


def last_token_activations(subject, prompts: list[str], sites: list[str], chunk: int = 32) -> dict[str, np.ndarray]:
    """(N, d) activation at each prompt's last token, per site (``chunk`` prompts per forward, so
    only the last tokens are kept: memory stays small on a deep model)."""
    out: dict[str, list[np.ndarray]] = {s: [] for s in sites}
    for i in range(0, len(prompts), chunk):
        part = prompts[i:i + chunk]
        acts = subject.activations_at(part, sites, batch_size=chunk)
        last = subject.batch(part).lengths - 1
        rows = torch.arange(len(part), device=last.device)
        for s, a in acts.items():
            out[s].append(to_numpy(a[rows, last].float()))
    return {s: np.concatenate(v) for s, v in out.items()}


def trait_vector(subject, trait: str, site: str, seed: int, per_template: int = 16,
                 world: worlds.World | None = None) -> np.ndarray:
    """Difference of means at ``site`` over ``world``'s matched pairs (default: the persona world):
    positive pole minus negative pole. Adding it steers toward the positive pole (persona: Luigi ->
    Waluigi, register: formal -> sailor, age: young -> old)."""
    world = world or worlds.resolve("persona", "", seed=seed, per_template=per_template)
    pairs = world.pairs([trait])
    acts = last_token_activations(subject, pairs.prompt.tolist(), [site])[site]
    lab = pairs.label.to_numpy()
    return acts[lab == 1].mean(0) - acts[lab == 0].mean(0)


# --------------------------------------------------------------------------- directions and scores


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def directions(pairs: pd.DataFrame, acts: dict[str, np.ndarray], seed: int
               ) -> tuple[pd.DataFrame, dict[tuple[str, str], np.ndarray]]:
    """Tidy scores (trait, site, layer, method, metric, value) on each trait's held-out templates
    (``pairs.heldout``, the world's split), and the diff-of-means vectors fitted on the rest."""
    rows, vectors = [], {}
    for trait, idx in pairs.groupby("trait", sort=False).groups.items():
        idx = np.asarray(idx)
        test = pairs.heldout.to_numpy()
        tr, te = idx[~test[idx]], idx[test[idx]]
        y_tr, y_te = pairs.label.to_numpy()[tr], pairs.label.to_numpy()[te]
        groups, pair_ids = pairs.template.astype(str).to_numpy()[te], pairs.pair_id.to_numpy()[te]
        for site, x in acts.items():
            layer = int(site.split(".")[1])
            dm = x[tr][y_tr == 1].mean(0) - x[tr][y_tr == 0].mean(0)
            vectors[(trait, site)] = dm
            probe = LogisticRegression(max_iter=5000, random_state=seed).fit(x[tr], y_tr)
            for method, score in (("probe", probe.decision_function(x[te])), ("diff_means", x[te] @ dm)):
                for metric, value in stats.separation(score, y_te, groups, pair_ids).items():
                    rows.append({"trait": trait, "site": site, "layer": layer, "method": method,
                                 "metric": metric, "value": value})
            rows.append({"trait": trait, "site": site, "layer": layer, "method": "diff_means",
                         "metric": "cosine_to_probe", "value": _cos(dm, probe.coef_[0])})
    return pd.DataFrame(rows), vectors


def trait_cosines(vectors: dict[tuple[str, str], np.ndarray]) -> pd.DataFrame:
    """Cosine between every two traits' diff-of-means vectors, per site."""
    rows = []
    for (ta, sa), va in vectors.items():
        for (tb, sb), vb in vectors.items():
            if sa == sb and ta < tb:
                rows.append({"trait_a": ta, "trait_b": tb, "site": sa, "layer": int(sa.split(".")[1]),
                             "cosine": _cos(va, vb)})
    return pd.DataFrame(rows, columns=["trait_a", "trait_b", "site", "layer", "cosine"])


def persona_axis(subject, sites: list[str], texts: dict[str, list[str]]) -> pd.DataFrame:
    """cos(mu_W - mu_0, mu_L - mu_0) per site, from ``texts``' ``neutral``, ``luigi`` and
    ``waluigi`` prompts (the persona world's `axis`): mu_0 from introductions that name no persona."""
    means = {k: last_token_activations(subject, v, sites) for k, v in texts.items()}
    return pd.DataFrame([{"site": s, "layer": int(s.split(".")[1]),
                          "cosine": _cos(means["waluigi"][s].mean(0) - means["neutral"][s].mean(0),
                                         means["luigi"][s].mean(0) - means["neutral"][s].mean(0))}
                         for s in sites])


# --------------------------------------------------------------------------- steering


def continuation_loss(subject, prompts: list[str], continuations: torch.Tensor, chunk: int = 8) -> np.ndarray:
    """Per row: the unsteered model's mean next-token loss (nats) on its generated continuation
    (``chunk`` rows per forward: a real vocabulary's logits are large)."""
    ids = [host_ids(subject.tokenizer(p)["input_ids"] + c.tolist()) for p, c in zip(prompts, continuations)]
    out = []
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        logits = subject.run(part)  # (B, T, V), prompt indexing
        for i, row in enumerate(part):
            n_new = len(continuations[start + i])
            lp = torch.log_softmax(logits[i, len(row) - n_new - 1: len(row) - 1].float(), -1)
            out.append(float(-lp.gather(1, row[len(row) - n_new:, None].to(lp.device)).mean()))
        del logits
    return np.array(out)


def steering_sweep(subject, vector: np.ndarray, site: str, world: worlds.World, trait: str,
                   cfg: PersonaConfig) -> pd.DataFrame:
    """The world's generation prompts steered along ``vector`` at each coefficient (one batch per
    coefficient, so memory does not grow with the sweep), each prompt with the same sampling noise
    at every coefficient.

    Tidy: coefficient, prompt_id, metric (positive_rate, negative_rate, lexicon_score = positive minus
    negative rate, coherence_loss), value.
    """
    prompts = world.prompts(cfg.n_prompts)
    v = torch.as_tensor(vector, dtype=torch.float32, device=subject.device)
    seeds = [cfg.seed * 7919 + i for i in range(len(prompts))]  # paired per prompt across coefficients
    rows = []
    for c in cfg.coefficients:
        gen = subject.generate(prompts, cfg.max_new_tokens, [iv.steer(v, c, site)] if c else [], seed=seeds)
        coherence = continuation_loss(subject, prompts, gen.tokens)
        for pid, text in enumerate(gen.text):
            rates = world.lexicon_rates(trait, text)
            score = rates["positive_rate"] - rates["negative_rate"]
            for metric, value in (*rates.items(), ("lexicon_score", score), ("coherence_loss", coherence[pid])):
                rows.append({"coefficient": float(c), "prompt_id": pid, "metric": metric, "value": float(value)})
    return pd.DataFrame(rows)


def logit_shift(subject, vector: np.ndarray, site: str, world: worlds.World, trait: str,
                cfg: PersonaConfig) -> pd.DataFrame:
    """log p(positive word) - log p(negative word) at the world's next-token choices for ``trait``,
    after each generation prompt, per coefficient (nats)."""
    choices = world.choices.get(trait, [])
    texts, pairs = [], []
    for p in world.prompts(cfg.n_prompts):
        name = p.split()[0]
        for suffix, negative, positive in choices:
            texts.append(p + suffix.format(me=name, name=name))
            pairs.append(words_to_ids(subject.tokenizer, [" " + positive, " " + negative]))  # the word after a space
    if not texts:
        return pd.DataFrame(columns=["coefficient", "choice", "prompt_id", "metric", "value"])
    v = torch.as_tensor(vector, dtype=torch.float32, device=subject.device)
    rows = []
    for c in cfg.coefficients:
        diff = []
        for start in range(0, len(texts), 8):  # 8 rows per forward: a real vocabulary's logits are large
            part = texts[start:start + 8]
            last = subject.batch(part).lengths - 1
            logits = subject.run(part, [iv.steer(v, c, site)] if c else [])
            lp = torch.log_softmax(logits[torch.arange(len(part), device=last.device), last].float(), -1)  # (n, V)
            diff += [lp[i, pos] - lp[i, neg] for i, (pos, neg) in enumerate(pairs[start:start + 8])]
        rows += [{"coefficient": float(c), "choice": i % len(choices), "prompt_id": i // len(choices),
                  "metric": "positive_minus_negative_logprob", "value": float(d)} for i, d in enumerate(diff)]
    return pd.DataFrame(rows)


def dose_response(sweep: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Mean and bootstrap CI over prompts per (metric, coefficient)."""
    rows = []
    for (metric, c), g in sweep.groupby(["metric", "coefficient"], sort=True):
        per_prompt = g.groupby("prompt_id").value.mean().to_numpy()
        low, high = stats.mean_ci(per_prompt, seed)
        rows.append({"metric": metric, "coefficient": c, "mean": float(per_prompt.mean()), "low": low, "high": high})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the experiment


@dataclass
class PersonaResults(Result):
    """``pairs``: the probed prompts; ``scores``: tidy separation per trait, site, method and metric;
    ``cosines``: between traits; ``axis``: the persona axis (persona world only, else empty);
    ``dose``: steering dose-response of the studied trait; ``vectors``: diff-of-means per (trait, site);
    ``skipped``: what the world gave nothing to measure, one sentence each."""

    trait: str
    steer_site: str
    pairs: pd.DataFrame
    scores: pd.DataFrame
    cosines: pd.DataFrame
    axis: pd.DataFrame
    dose: pd.DataFrame
    vectors: dict
    metrics: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)


def run(cfg: PersonaConfig, subject=None) -> PersonaResults:
    from gremlinkit import load

    world = cfg.make_world()
    subject = subject or load(cfg.model, sae=False, **cfg.load_kwargs())
    if cfg.steer_site != "auto":
        subject.site_map.resolve(cfg.steer_site)
    sites = [f"blocks.{L}.hook_resid_post" for L in range(subject.site_map.n_layers)]
    trait = cfg.studied(world)
    pairs = world.pairs(list(dict.fromkeys([*cfg.traits, trait])) if cfg.traits else None)
    acts = last_token_activations(subject, pairs.prompt.tolist(), sites)
    scores, vectors = directions(pairs, acts, cfg.seed)
    steer_site = cfg.steer_site if cfg.steer_site != "auto" else f"blocks.{best_readout(scores, trait)[1]}.hook_resid_post"
    axis = persona_axis(subject, sites, world.axis) if world.axis else pd.DataFrame(columns=["site", "layer", "cosine"])
    dose = pd.DataFrame(columns=["metric", "coefficient", "mean", "low", "high"])
    skipped = [] if pairs.trait.nunique() > 1 else [f"cosines between traits: the {world.name} world has one trait"]
    if not world.generation:
        skipped.append(f"the steering sweep: the {world.name} world has no generation prompts")
    elif trait not in world.lexicons:
        skipped.append(f"the steering sweep: the {world.name} world has no lexicon for {trait}")
    else:
        v = vectors[(trait, steer_site)]
        sweep = pd.concat([steering_sweep(subject, v, steer_site, world, trait, cfg),
                           logit_shift(subject, v, steer_site, world, trait, cfg)])
        dose = dose_response(sweep, cfg.seed)
    res = PersonaResults(trait, steer_site, pairs, scores, trait_cosines(vectors), axis, dose, vectors,
                         skipped=skipped)
    res.metrics = metrics(res)
    return res


def cosine_table(res: PersonaResults) -> pd.DataFrame:
    """Cosines between the traits' directions, a row per pair of traits and a column per layer; or
    one row saying why there are none."""
    if not len(res.cosines):
        return pd.DataFrame({"skipped": [s for s in res.skipped if s.startswith("cosines")] or ["no cosines"]})
    return res.cosines.pivot_table(index=["trait_a", "trait_b"], columns="layer", values="cosine").round(2)


def dose_table(res: PersonaResults) -> pd.DataFrame:
    """The steering sweep's mean per metric (rows) and coefficient (columns); or one row saying why
    there was none."""
    if not len(res.dose):
        return pd.DataFrame({"skipped": [s for s in res.skipped if "steering" in s] or ["no steering sweep"]})
    return res.dose.pivot_table(index="metric", columns="coefficient", values="mean").round(3)


def best_readout(scores: pd.DataFrame, trait: str) -> tuple[str, int]:
    """The (method, layer) that separates ``trait`` best on held-out templates (pooled AUROC; ties
    go to the probe, then to the earlier layer). The choice is made on the held-out set itself, so
    the headline figure is the best of 2 x n_layers readouts: read the whole table beside it."""
    g = scores[(scores.trait == trait) & (scores.metric == "auroc_pooled")]
    g = g.assign(order=(g.method != "probe").astype(int)).sort_values(["value", "order", "layer"],
                                                                     ascending=[False, True, True])
    return str(g.method.iloc[0]), int(g.layer.iloc[0])


def metrics(res: PersonaResults) -> dict[str, float]:
    """Flat metrics. For the trait under study, at its best readout (`best_readout`):
    ``auroc_pooled``, ``auroc_within_template``, ``paired_accuracy``, ``best_layer``,
    ``best_method``; per trait, ``{trait}_auroc_pooled`` at its own best readout; the steering
    figures when it steered."""
    s = res.scores
    method, layer = best_readout(s, res.trait)
    at = s[(s.trait == res.trait) & (s.layer == layer) & (s.method == method)].set_index("metric").value
    out = {"trait": res.trait, "best_layer": layer, "best_method": method, "auroc_pooled": float(at["auroc_pooled"]),
           "auroc_within_template": float(at["auroc_within_template"]),
           "paired_accuracy": float(at["paired_accuracy"])}
    for trait in dict.fromkeys(s.trait):
        out[f"{trait}_auroc_pooled"] = float(s[(s.trait == trait) & (s.metric == "auroc_pooled")].value.max())
    if len(res.dose):
        def sweep(metric: str) -> np.ndarray:
            return res.dose[res.dose.metric == metric].sort_values("coefficient")["mean"].to_numpy()

        score, rate, coherence = sweep("lexicon_score"), sweep("positive_rate"), sweep("coherence_loss")
        out.update(lexicon_score_at_0=float(score[0]), lexicon_score_at_max=float(score[-1]),
                   positive_rate_at_0=float(rate[0]), positive_rate_at_max=float(rate[-1]),
                   steering_monotonic=bool((np.diff(score) > 0).all()),
                   coherence_cost_at_max_nats=float(coherence[-1] - coherence[0]))
        shift = sweep("positive_minus_negative_logprob")
        if len(shift):
            out["logit_shift_at_max_nats"] = float(shift[-1] - shift[0])
    if len(res.axis):
        out["persona_axis_cosine_min"] = float(res.axis.cosine.min())
    out["max_abs_cross_trait_cosine"] = float(res.cosines.cosine.abs().max()) if len(res.cosines) else 0.0
    return out
