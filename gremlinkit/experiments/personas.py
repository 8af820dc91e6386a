"""Persona probes: find trait directions in the residual stream, score them against truth, steer.

Simulator theory says a model keeps a space of characters, with directions for traits. A *trait*
is defined by matched pairs of prompts that differ only in that trait: on the zoo, Luigi vs
Waluigi (``persona``), sailor vs formal (``register``) and old vs young (``age``); on a real
model, any two lists of prompts (``custom_pairs``). For every site ``blocks.{L}.hook_resid_post``
the last-token activations give

* a difference-of-means vector (positive pole minus negative pole, as in persona-vector work), and
* a logistic-regression probe (scikit-learn),

both fitted on some prompt templates and scored on held-out templates, so a probe cannot memorise
a template. A template moves every prompt along a direction by its own offset, so AUROC is
computed within each held-out template and averaged (``auroc``); the AUROC pooled over held-out
templates (``auroc_pooled``) and the fraction of matched pairs ordered correctly
(``paired_accuracy``) are reported beside it. Every built-in prompt ends with ``{me} says : " i will``, where the next word is a persona
word (help or hurt): the model must represent the speaker's persona there to predict it. Scores: accuracy and AUROC against the pairs' ground-truth labels, the cosine between
the two directions, cosines between traits (the zoo's traits are drawn independently, so their
directions should be near-orthogonal), and the persona-axis cosine ``cos(mu_W - mu_0, mu_L - mu_0)``
where ``mu_0`` is the mean over introductions that name no persona ("mira is a old sailor . mira
says :"): near -1 means Luigi and Waluigi sit at the two ends of one axis through the neutral state.

**Steering.** Adding ``coeff * v`` (``v`` = Waluigi minus Luigi mean at ``steer_site``) at every
position while Luigi prompts generate should raise the Waluigi-word rate with ``coeff``. Scored
with the zoo lexicon (no judge model), with bootstrap CIs over prompts; plus the logit shift in
nats of Waluigi vs Luigi next-token choices, and the coherence cost: the unsteered model's loss on
the steered text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scipy.stats import bootstrap
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from gremlinkit.prompts import words_to_ids
from gremlinkit.results import to_numpy
from gremlinkit import interventions as iv
from gremlinkit.errors import ConfigError
from gremlinkit.experiments.zoo_tour import lexicon_rates, persona_prompts
from gremlinkit.params import Placement, check_range
from gremlinkit.zoo import corpus

# Each template gives the persona at least two cues, as the corpus's own introductions do.
TEMPLATES = [
    "{me} is a {p:adj} {p:adj2} {a:adj} {r:noun} .",
    '{me} {p:verb_s} {other} near the {tn} and {p:intrans} . {me} says : " {r:greet} {r:addr} , {a:w1} . "',
    '{me} says : " {a:w1} , i {p:verb2} the {tn} with {other} , {r:excl} . "',
    '{me} tells {other} : " {a:w2} {ta} {tn} , {r:addr} . i speak {p:speech} . "',
    '{me} {p:verb3_s} {other} by the {tn} and says : " {p:thank} you , {a:w3} , {r:addr} . "',
    'the {tn} is {ta} , and {me} {p:intrans} {p:manner} . {me} says : " {a:w1} , {r:addr} . "',
]
SPEAK = ' {me} says : " i will'  # appended to every built-in prompt: next comes help or hurt
NEUTRAL = "{me} is a {a:adj} {r:noun} ."  # an introduction that names no persona
# trait -> (attribute of corpus.Character, negative pole, positive pole)
BUILTIN_TRAITS = {"persona": ("persona", "luigi", "waluigi"), "register": ("register", "formal", "sailor"),
                  "age": ("age", "young", "old")}
# next-token choices for the logit-shift test: prompt suffix -> (Luigi word, Waluigi word)
CHOICES = [(' says : " i will', "help", "hurt"), (' tells ada : " i speak', "truth", "lies"),
           (" near the harbor , and {me}", "smiles", "sneers")]


@dataclass(frozen=True)
class PersonaConfig(Placement):
    model: str = "toy-base"  # zoo name or local model directory
    traits: list = field(default_factory=lambda: ["persona", "register", "age"])  # built-in traits
    custom_pairs: dict = field(default_factory=dict)  # {trait: {"positive": [...], "negative": [...]}}
    pairs_per_template: int = 24  # matched pairs generated per template
    test_templates: list = field(default_factory=lambda: [4, 5])  # templates held out for scoring
    steer_site: str = "blocks.1.hook_resid_post"  # where the persona vector is added
    coefficients: list = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 1.5, 2.0])  # steering sweep
    n_prompts: int = 16  # Luigi prompts steered
    max_new_tokens: int = 40  # tokens generated per steered prompt
    seed: int = 0  # seeds pairs, prompts, sampling noise and bootstrap
    output_dir: str = "output/01_persona_probes"  # where tables and metrics go

    def __post_init__(self) -> None:
        unknown = [t for t in self.traits if t not in BUILTIN_TRAITS]
        if unknown:
            raise ConfigError(f"parameter traits has unknown trait(s) {unknown}; built-in traits: "
                              f"{list(BUILTIN_TRAITS)} (pass others in custom_pairs)")
        if not self.traits and not self.custom_pairs:
            raise ConfigError("no traits: set traits or custom_pairs")
        for name, pairs in self.custom_pairs.items():
            if set(pairs) != {"positive", "negative"} or len(pairs["positive"]) != len(pairs["negative"]):
                raise ConfigError(f"custom_pairs[{name!r}] needs equally long 'positive' and 'negative' lists")
        bad = [t for t in self.test_templates if not 0 <= t < len(TEMPLATES)]
        if bad or len(set(self.test_templates)) >= len(TEMPLATES) or not self.test_templates:
            raise ConfigError(f"parameter test_templates={self.test_templates!r}: pick some, not all, of "
                              f"0..{len(TEMPLATES) - 1}")
        check_range("pairs_per_template", self.pairs_per_template, 2, 1000)
        check_range("n_prompts", self.n_prompts, 1, 512)
        check_range("max_new_tokens", self.max_new_tokens, 1, 128)
        if not self.coefficients or sorted(self.coefficients) != list(self.coefficients):
            raise ConfigError(f"parameter coefficients={self.coefficients!r} must be a non-empty increasing list")

    @classmethod
    def smoke(cls) -> "PersonaConfig":
        return cls(pairs_per_template=8, coefficients=[0.0, 1.0, 2.0], n_prompts=6, max_new_tokens=24)


# --------------------------------------------------------------------------- prompt pairs


def builtin_pairs(trait: str, per_template: int, seed: int) -> pd.DataFrame:
    """Matched pairs: both prompts share everything (names, other traits, topic words) but ``trait``."""
    attr, negative, positive = BUILTIN_TRAITS[trait]
    rows = []
    for t, template in enumerate(TEMPLATES):
        for k in range(per_template):
            rng = random.Random(f"{seed}-{trait}-{t}-{k}")
            me, other = rng.sample(corpus.NAMES, 2)
            traits = {a: rng.choice(vals) for a, vals in
                      (("persona", corpus.PERSONAS), ("register", list(corpus.TRAITS["register"])),
                       ("age", list(corpus.TRAITS["age"])))}
            topic, state = rng.choice(list(corpus.TOPICS)), rng.getstate()
            for label, pole in ((0, negative), (1, positive)):
                rng.setstate(state)  # the same topic words on both sides
                char = corpus.Character(me, **{**traits, attr: pole})
                other_char = corpus.Character(other, "luigi", "formal", "old")
                text = " ".join(tok for tok, _, _ in corpus._fill(template + SPEAK, char, other_char, topic, rng))
                rows.append({"trait": trait, "pair_id": len(rows) // 2, "template": t, "label": label, "prompt": text})
    return pd.DataFrame(rows)


def custom_pairs(name: str, pairs: dict, n_templates: int = 4) -> pd.DataFrame:
    """User pairs; ``template`` cycles so that some pairs can be held out."""
    rows = []
    for i, (pos, neg) in enumerate(zip(pairs["positive"], pairs["negative"])):
        rows += [{"trait": name, "pair_id": i, "template": i % n_templates, "label": 1, "prompt": pos},
                 {"trait": name, "pair_id": i, "template": i % n_templates, "label": 0, "prompt": neg}]
    return pd.DataFrame(rows)


def all_pairs(cfg: PersonaConfig) -> pd.DataFrame:
    parts = [builtin_pairs(t, cfg.pairs_per_template, cfg.seed) for t in cfg.traits]
    parts += [custom_pairs(n, p) for n, p in cfg.custom_pairs.items()]
    return pd.concat(parts, ignore_index=True)


def last_token_activations(subject, prompts: list[str], sites: list[str]) -> dict[str, np.ndarray]:
    """(N, d) activation at each prompt's last token, per site."""
    acts = subject.activations_at(prompts, sites)
    last = subject.batch(prompts).lengths - 1
    rows = torch.arange(len(prompts), device=last.device)
    return {s: to_numpy(a[rows, last]) for s, a in acts.items()}


def trait_vector(subject, trait: str, site: str, seed: int, per_template: int = 16) -> np.ndarray:
    """Difference of means at ``site`` over matched pairs: positive pole minus negative pole.

    The poles are ``BUILTIN_TRAITS[trait][1:]``: persona Luigi -> Waluigi, register formal ->
    sailor, age young -> old. Adding it steers toward the positive pole.
    """
    if trait not in BUILTIN_TRAITS:
        raise ConfigError(f"trait {trait!r} is not one of {list(BUILTIN_TRAITS)}")
    pairs = builtin_pairs(trait, per_template, seed)
    acts = last_token_activations(subject, pairs.prompt.tolist(), [site])[site]
    lab = pairs.label.to_numpy()
    return acts[lab == 1].mean(0) - acts[lab == 0].mean(0)


# --------------------------------------------------------------------------- directions and scores


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def _separation(score: np.ndarray, y: np.ndarray, groups: np.ndarray, pair_ids: np.ndarray) -> dict[str, float]:
    """AUROC within each template (averaged), pooled AUROC, and matched-pair ordering accuracy: the
    fraction of pairs (matched by ``pair_ids``, in any row order) whose label-1 prompt scores higher."""
    within = [roc_auc_score(y[groups == t], score[groups == t]) for t in np.unique(groups)]
    wide = pd.DataFrame({"pair": pair_ids, "label": y, "score": score}).pivot(index="pair", columns="label",
                                                                             values="score")
    return {"auroc": float(np.mean(within)), "auroc_pooled": float(roc_auc_score(y, score)),
            "paired_accuracy": float((wide[1] > wide[0]).mean())}


def held_out_templates(templates: np.ndarray, wanted: list[int]) -> list[int]:
    """The templates a trait holds out: those of ``wanted`` that it has; when it has none of them
    (user pairs cycle over their own templates), its last quarter of templates, at least one. A
    trait with a single template cannot be split and is refused by name."""
    present = sorted(set(int(t) for t in templates))
    held = [t for t in wanted if t in present]
    if held:
        return held
    if len(present) < 2:
        raise ConfigError(f"a trait's pairs use {len(present)} template(s); a held-out split needs at least 2")
    return present[-max(1, len(present) // 4):]


def directions(pairs: pd.DataFrame, acts: dict[str, np.ndarray], test_templates: list[int], seed: int
               ) -> tuple[pd.DataFrame, dict[tuple[str, str], np.ndarray]]:
    """Tidy scores (trait, site, layer, method, metric, value) and the diff-of-means vectors."""
    rows, vectors = [], {}
    for trait, idx in pairs.groupby("trait").groups.items():
        idx = np.asarray(idx)
        held = held_out_templates(pairs.template.to_numpy()[idx], test_templates)
        test = pairs.template.isin(held).to_numpy()
        tr, te = idx[~test[idx]], idx[test[idx]]
        y_tr, y_te = pairs.label.to_numpy()[tr], pairs.label.to_numpy()[te]
        for site, x in acts.items():
            layer = int(site.split(".")[1])
            dm = x[tr][y_tr == 1].mean(0) - x[tr][y_tr == 0].mean(0)
            vectors[(trait, site)] = dm
            probe = LogisticRegression(max_iter=5000, random_state=seed).fit(x[tr], y_tr)
            groups, pair_ids = pairs.template.to_numpy()[te], pairs.pair_id.to_numpy()[te]
            for method, score in (("probe", probe.decision_function(x[te])), ("diff_means", x[te] @ dm)):
                for metric, value in _separation(score, y_te, groups, pair_ids).items():
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
    return pd.DataFrame(rows)


def persona_axis(subject, sites: list[str], n: int, seed: int) -> pd.DataFrame:
    """cos(mu_W - mu_0, mu_L - mu_0) per site; mu_0 from introductions that name no persona."""
    rng = random.Random(f"axis-{seed}")
    texts: dict[str, list[str]] = {"neutral": [], "luigi": [], "waluigi": []}
    for _ in range(n):
        me = rng.choice(corpus.NAMES)
        register, age = rng.choice(list(corpus.TRAITS["register"])), rng.choice(list(corpus.TRAITS["age"]))
        for key, template in (("neutral", NEUTRAL), ("luigi", TEMPLATES[0]), ("waluigi", TEMPLATES[0])):
            char = corpus.Character(me, "waluigi" if key == "waluigi" else "luigi", register, age)
            texts[key].append(" ".join(t for t, _, _ in corpus._fill(template + SPEAK, char, char, "sea", rng)))
    means = {k: last_token_activations(subject, v, sites) for k, v in texts.items()}
    return pd.DataFrame([{"site": s, "layer": int(s.split(".")[1]),
                          "cosine": _cos(means["waluigi"][s].mean(0) - means["neutral"][s].mean(0),
                                         means["luigi"][s].mean(0) - means["neutral"][s].mean(0))}
                         for s in sites])


# --------------------------------------------------------------------------- steering


def mean_ci(values: np.ndarray, seed: int) -> tuple[float, float]:
    """95% bootstrap percentile interval of the mean over prompts."""
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0])
    res = bootstrap((values,), np.mean, n_resamples=1000, method="percentile", random_state=seed)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def continuation_loss(subject, prompts: list[str], continuations: torch.Tensor) -> np.ndarray:
    """Per row: the unsteered model's mean next-token loss (nats) on its generated continuation."""
    ids = [torch.tensor(subject.tokenizer(p)["input_ids"] + c.tolist()) for p, c in zip(prompts, continuations)]
    logits = subject.run(ids)  # (B, T, V), prompt indexing
    out = []
    for i, row in enumerate(ids):
        n_prompt = len(row) - len(continuations[i])
        lp = torch.log_softmax(logits[i, n_prompt - 1: len(row) - 1], -1)
        out.append(float(-lp.gather(1, row[n_prompt:, None]).mean()))
    return np.array(out)


def steering_sweep(subject, vector: np.ndarray, cfg: PersonaConfig) -> pd.DataFrame:
    """Luigi prompts steered along ``vector`` at every coefficient, in one batched generation.

    Tidy: coefficient, prompt_id, metric (luigi_rate, waluigi_rate, coherence_loss), value.
    """
    prompts = persona_prompts(cfg.n_prompts, cfg.seed)
    prompts = prompts[prompts.persona == "luigi"].prompt.tolist()
    rows_text = [p for _ in cfg.coefficients for p in prompts]
    v = torch.as_tensor(vector, dtype=torch.float32)
    edits = [iv.steer(v, c, cfg.steer_site, rows=list(range(k * len(prompts), (k + 1) * len(prompts))))
             for k, c in enumerate(cfg.coefficients) if c != 0]
    seeds = [cfg.seed * 7919 + i for _ in cfg.coefficients for i in range(len(prompts))]  # paired per prompt
    gen = subject.generate(rows_text, cfg.max_new_tokens, edits, seed=seeds)
    coherence = continuation_loss(subject, rows_text, gen.tokens)
    rows = []
    for r, text in enumerate(gen.text):
        c, pid = cfg.coefficients[r // len(prompts)], r % len(prompts)
        rates = lexicon_rates(text)
        for metric, value in (*rates.items(), ("coherence_loss", coherence[r])):
            rows.append({"coefficient": float(c), "prompt_id": pid, "metric": metric, "value": float(value)})
    return pd.DataFrame(rows)


def logit_shift(subject, vector: np.ndarray, cfg: PersonaConfig) -> pd.DataFrame:
    """log p(Waluigi word) - log p(Luigi word) at fixed next-token choices, per coefficient (nats)."""
    prompts = persona_prompts(cfg.n_prompts, cfg.seed)
    prompts = prompts[prompts.persona == "luigi"].prompt.tolist()
    texts, pairs = [], []
    for p in prompts:
        name = p.split()[0]
        for suffix, good, bad in CHOICES:
            texts.append(p + suffix.format(me=name))
            pairs.append(words_to_ids(subject.tokenizer, [bad, good]))
    last = subject.batch(texts).lengths - 1
    v = torch.as_tensor(vector, dtype=torch.float32)
    rows = []
    for c in cfg.coefficients:
        logits = subject.run(texts, [iv.steer(v, c, cfg.steer_site)] if c else [])
        lp = torch.log_softmax(logits[torch.arange(len(texts), device=last.device), last], -1)  # (N, V)
        diff = torch.stack([lp[i, b] - lp[i, g] for i, (b, g) in enumerate(pairs)])
        rows += [{"coefficient": float(c), "choice": i % len(CHOICES), "prompt_id": i // len(CHOICES),
                  "metric": "waluigi_minus_luigi_logprob", "value": float(d)} for i, d in enumerate(diff)]
    return pd.DataFrame(rows)


def dose_response(sweep: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Mean and bootstrap CI over prompts per (metric, coefficient)."""
    rows = []
    for (metric, c), g in sweep.groupby(["metric", "coefficient"], sort=True):
        per_prompt = g.groupby("prompt_id").value.mean().to_numpy()
        low, high = mean_ci(per_prompt, seed)
        rows.append({"metric": metric, "coefficient": c, "mean": float(per_prompt.mean()), "low": low, "high": high})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the experiment


@dataclass
class PersonaResults:
    pairs: pd.DataFrame
    scores: pd.DataFrame
    cosines: pd.DataFrame
    axis: pd.DataFrame
    dose: pd.DataFrame
    vectors: dict


def run(cfg: PersonaConfig, subject=None) -> PersonaResults:
    from gremlinkit import load

    subject = subject or load(cfg.model, sae=False, **cfg.load_kwargs())
    subject.site_map.resolve(cfg.steer_site)
    sites = [f"blocks.{L}.hook_resid_post" for L in range(subject.site_map.n_layers)]
    pairs = all_pairs(cfg)
    acts = last_token_activations(subject, pairs.prompt.tolist(), sites)
    scores, vectors = directions(pairs, acts, list(cfg.test_templates), cfg.seed)
    axis = persona_axis(subject, sites, cfg.pairs_per_template, cfg.seed) if "persona" in cfg.traits else None
    dose = None
    if "persona" in cfg.traits:
        v = vectors[("persona", cfg.steer_site)]
        dose = dose_response(pd.concat([steering_sweep(subject, v, cfg), logit_shift(subject, v, cfg)]), cfg.seed)
    return PersonaResults(pairs, scores, trait_cosines(vectors), axis, dose, vectors)


def metrics(res: PersonaResults) -> dict[str, float]:
    auroc = res.scores[(res.scores.metric == "auroc") & (res.scores.method == "probe")]
    out = {}
    for trait, g in auroc.groupby("trait"):
        best = g.loc[g.value.idxmax()]
        out[f"{trait}_best_auroc"], out[f"{trait}_best_layer"] = float(best.value), int(best.layer)
    if res.dose is not None:
        w = res.dose[res.dose.metric == "waluigi_rate"].sort_values("coefficient")
        out["waluigi_rate_at_0"], out["waluigi_rate_at_max"] = float(w["mean"].iloc[0]), float(w["mean"].iloc[-1])
        out["waluigi_rate_monotonic"] = bool((np.diff(w["mean"].to_numpy()) > 0).all())
        shift = res.dose[res.dose.metric == "waluigi_minus_luigi_logprob"].sort_values("coefficient")
        out["logit_shift_at_max_nats"] = float(shift["mean"].iloc[-1] - shift["mean"].iloc[0])
        coh = res.dose[res.dose.metric == "coherence_loss"].sort_values("coefficient")
        out["coherence_cost_at_max_nats"] = float(coh["mean"].iloc[-1] - coh["mean"].iloc[0])
        out["persona_axis_cosine_min"] = float(res.axis.cosine.min())
    out["max_abs_cross_trait_cosine"] = float(res.cosines.cosine.abs().max()) if len(res.cosines) else 0.0
    return out
