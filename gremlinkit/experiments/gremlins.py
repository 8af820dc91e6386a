"""The gremlin comparison: does on-policy RL breed persistent features that off-policy SFT does not?

The same persistence scan (on-policy, `gremlinkit.experiments.persistence`) runs on toy-base,
toy-sft and toy-rl with the *same* feature ids and toy-base's SAE shared by all three, so a feature
means the same direction in every model. The census is every live feature (``full=True``) or, by
default, a random sample of them, drawn without looking at any result.

**The natural positive control.** Beside the census, the scan follows the feature that best marks
``control_topic`` on held-out stories (chosen by the corpus's labels; "sea" is toy-base's most
topic-selective feature). A topic persists by the corpus's own switching chain, with a half-life
known from the generator (`persistence.expected_topic_half_life`, 32.4 tokens), so in toy-base,
which learned the corpus, this feature must come out persistent with a half-life near that truth.
It is tested in the same family as the census (one Benjamini–Hochberg correction per model) and is
not counted in the census. The truth holds for the base model only: the fine-tunes were trained
towards sea words, which changes that topic's dynamics by design, so in them the control is
reported, not required.

**The planted positive controls and their null** (`gremlinkit.zoo.planted`). toy-base fine-tuned on
stories whose topic chain has eigenvalue 0.9 (``toy-planted-90``: a topic, once emitted, keeps
re-emitting itself), 0.5 (``toy-planted-50``) or 0 (``toy-planted-null``: the same topic
frequencies, no self-reinforcement). With toy-base's own chain (0.76) they make a dose series of
known persistence. The control feature is scanned in each with ``planted_seeds`` scan seeds (other
prompts and sampling noise), and on the null every topic's feature is. A lone feature counts as
*detected* when its p-value clears the bar Benjamini–Hochberg sets for a single discovery in a
family the census's size (``p <= 0.05 / (census + 1)``), so the controls face the census's own
correction. Reported: the *sensitivity* (detection rate in toy-planted-90), the *null false-positive
rate* (detection rate over the null's topic features and seeds, whose truth is no persistence), and
the *minimum detectable strength* (the weakest eigenvalue detected in >= 80% of seeds).

**Power over every topic, not the best feature** (`topic_power`, ``power.csv``). In toy-planted-90
every topic re-emits itself, not only the sea. So each topic's three best features (by the score
that chose the control) are scanned in the same organisms and seeds, and each scan is read twice:
for its *direct* effect (the topic's word rate over the first sentence after the edit, against the
paired run) and for persistence at the census's bar. The planted truth applies where the edit
drives its topic (a positive direct effect at p <= 0.05); there, a topic's *sensitivity* is the
share of its driving scans detected in toy-planted-90, and the census's power is the median over
topics (`topic_power_summary`, with a bootstrap interval over topics). Candidates that drive
nothing are named and are no evidence either way. The planted controls above are read from the same
scans (`planted_rows`).

**Decision rule, fixed before looking.** A feature is persistent by the rule of the persistence
module (the edit's own sign persists in the tail, BH q <= 0.05). The hypothesis predicts more
persistent features in toy-rl than in toy-base, and more than in toy-sft. Each comparison is a
one-sided Fisher exact test on the census counts at alpha = 0.05. The call is:

* *no power* when the natural control is not found persistent in the base model, the planted
  control is detected in fewer than 80% of seeds, or the median topic's driving features are
  detected in fewer than 80% of their planted scans, whatever the counts;
* *support* when both tests pass;
* *contradict* when toy-rl has fewer persistent features than either control with p < 0.05;
* *inconclusive* otherwise.

**Dose-response and the matched controls.** The hypothesis predicts that persistence grows with
the number of on-policy RL cycles and with the reward's horizon, and that on-policy RL breeds more
of it than rejection sampling (the base model's own best samples, trained offline), which breeds no
less than off-policy SFT, at equal reward (`gremlinkit.zoo.finetune`). The dose organisms
(``dose_models``: toy-rl after 20, 80 and 320 steps of one run, a horizon-128 run after 80, and
toy-rs) are scanned with the census's features on its first ``dose_prompts`` prompts, as are the
main models (the same rows of their scan), so every organism is measured alike. Per organism the
*persistence statistic* is the census's mean tail ratio, ``tail_effect / effect_lag0`` (the share
of an edit's direct effect still there in the tail, in the edit's own sign), with a bootstrap
interval over features, beside its persistent fraction and the card's reward, KL and weight change.

**The behavioural form** (`persistence.behaviour`). For every census feature and model, the change
that one edit makes 16-48 tokens later in the feature's own prevalence and in the rate of the
reward's sea words among the chosen tokens, against the paired no-edit run (census.csv columns
``prevalence_delta``, ``word_rate_delta`` and their p-values). The same is read for an *ablation*
where the feature lives: each census feature is zeroed at its first firing in tokens 8-39 of each
of ``ablate_prompts`` stories (``positions=["active:8"]``, horizon 48; a story where it never fires
there is left out, ``ablate_edits`` counts the rest), columns ``ablate_*``; and beside it the
same feature set to its mean over the census's prompts instead of zero (columns
``ablate_to_mean_*``): a zero the model never sees can act through being off-distribution, a mean
cannot.

**Self-repair** (`natural.self_repair`, ``self_repair.csv``). Each census edit and each random
direction, on the census's first ``repair_prompts`` prompts, read at its own token at the final
norm's input and at the logits: the share of the edit that survives the later layers along itself,
and the logit change as a share of the direct change (the edit put at the final norm's input). An
edit the later layers undo cannot persist however the census reads it.

**A model where nothing is planted** (a world without topic stories, such as smollm2-135m's English):
the natural control is the feature that best marks ``control_topic`` in the English stories, and its
truth is measured in the model itself, by a text edit (`gremlinkit.experiments.natural`); there are no
planted organisms (``planted_seeds=0``). On every model, ``random_directions`` random unit directions
pushed at the census's edit positions are the null that bounds the census's false positives. The call
is "no power" when the natural control is not detected in the base model, when its half-life is not
within 50% of its truth's, or when the null is detected in more than 5% of directions.

Where each fine-tune changed the weights and the residual stream is notebook 06's
(`agents.localisation`).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import binomtest, fisher_exact
from scipy.stats import t as student_t
from tqdm.auto import tqdm

from gremlinkit import stats, stories
from gremlinkit.workers import runner as scan_runner
from gremlinkit.experiments import natural, persistence, zoo_tour
from gremlinkit.results import Result, atomic_write_text, write_metrics, write_table
from gremlinkit.errors import ConfigError
from gremlinkit.params import check_choice, check_range


ABLATE_START = 8  # the behavioural ablation looks for each feature's first firing from this token on
DOSE_MODELS = ("toy-rl-20", "toy-rl-80", "toy-rl-320", "toy-rl-h128-80", "toy-rs")  # built by `zoo build`
COMPARED_METHODS = ("off-policy SFT", "rejection sampling", "on-policy RL")  # what `family` puts in `models`


@dataclass(frozen=True)
class GremlinConfig(persistence.PersistenceConfig):
    """The census is a persistence scan: every field of `PersistenceConfig`, with the defaults
    below, plus the controls and series that make it a test."""

    models: list = field(default_factory=lambda: ["toy-sft", "toy-rl"])  # fine-tunes compared with the base `model`
    features: Any = "random-32"  # the census: "random-N", "top-N", "live" (every live one) or a list of ids
    scale: float = 48.0  # added to the feature when intervention is "add"
    horizon: int = 96  # tokens followed after the edit
    n_prompts: int = 128  # held-out stories per feature
    mode: str = "on_policy"  # the census is on-policy (teacher-forced edits cannot persist at their site)
    output_dir: str = "output/04_gremlin_comparison"  # where chunks, tables and metrics go
    full: bool = False  # census of every live feature of the SAE (~20 min per model on 2 CPU cores)
    control_topic: str = "sea"  # natural positive control: this topic's feature, in the same scan ("" for none)
    planted_seeds: int = 5  # scan seeds for the planted controls and their null (0: skip them)
    dose_models: list = field(default_factory=lambda: list(DOSE_MODELS))  # RL dose series and toy-rs ([]: skip)
    dose_prompts: int = 64  # prompts per feature in the dose series (the census's first ones)
    ablate_prompts: int = 64  # stories per feature for the ablation where each feature fires (0: skip)
    backend: str = "local"  # where the scans' units run: "local" (this process) or "ray" (Ray workers)
    workers: int = 2  # Ray workers (actors), each loading every model once
    address: str = ""  # a running Ray cluster to join ("auto", "HOST:PORT", "ray://HOST:PORT"); "": start one here
    threads: int = 0  # torch threads per worker; 0: this process's setting locally, 1 per Ray worker
    gpus_per_worker: float = 0.0  # GPUs each Ray worker holds (0.5: two workers share one)
    random_directions: int = 20  # random-direction null on every model: directions pushed like a feature (0: skip)
    control_prompts: int = 64  # prompts for the null, and for the text-edit control where nothing is planted
    family: str = ""  # a model family (e.g. "smollm2"): its base is `model`, its SFT and RL fine-tunes `models`
    repair_prompts: int = 8  # prompts on which each census edit and random direction is read for self-repair (0: skip)

    def __post_init__(self) -> None:
        if self.family:
            self._take_family()
        super().__post_init__()
        self.runner()  # checks the backend's fields, and that a cluster answers at ``address``
        check_choice("mode", self.mode, ["on_policy"])
        check_range("n_prompts", self.n_prompts, 2, 4096)
        check_range("dose_prompts", self.dose_prompts, 2, self.n_prompts)
        check_range("ablate_prompts", self.ablate_prompts, 0, 4096)
        check_range("horizon", self.horizon, persistence.BEHAVIOUR_WINDOW[1], 200)  # the behavioural form's window
        check_range("random_directions", self.random_directions, 0, 1000)
        check_range("control_prompts", self.control_prompts, 2, 4096)
        check_range("repair_prompts", self.repair_prompts, 0, 4096)
        story = self.story()
        # Where the world has topic stories, the control's truth is their chain; elsewhere, a text edit
        # in the English stories (`natural`), whose topics are gremlinkit.stories'.
        check_choice("control_topic", self.control_topic, ["", *(story.topics if story else stories.TOPICS)])
        check_range("planted_seeds", self.planted_seeds, 0, 100)
        if self.planted_seeds and not self.control_topic:
            raise ConfigError("parameter planted_seeds needs a control_topic: the planted controls scan its feature")
        if self.planted_seeds and story is None:
            raise ConfigError(f"parameter planted_seeds={self.planted_seeds}: the planted organisms are the toy "
                              f"family's, and {self.model!r} reads a world without topic stories; set "
                              "planted_seeds=0 (the text-edit control and the random-direction null give power "
                              "and false positives there)")

    def _take_family(self) -> None:
        """Fill ``model``, ``models``, ``dose_models`` and ``planted_seeds`` from ``family``: its
        base; its first fine-tune of each of `COMPARED_METHODS` that is not a dose model; the dose
        models it has; and no planted controls where its world has no topic stories."""
        from gremlinkit import providers, worlds
        from gremlinkit.errors import UnknownArtefactError

        try:
            fam = providers.family(self.family)
        except UnknownArtefactError as err:
            raise ConfigError(f"parameter family={self.family!r}: {err}") from None
        if self.model not in (type(self).model, fam.base):
            raise ConfigError(f"parameters family={self.family!r} and model={self.model!r}: the family names its own "
                              f"base ({fam.base!r}); set one of the two")
        dose = [m for m in self.dose_models if m in fam.names]
        first = {}  # method -> the family's first member trained so (a series' later snapshots are dose models)
        for m in fam.members:
            if m.method in COMPARED_METHODS and m.name not in dose:
                first.setdefault(m.method, m.name)
        set_ = functools.partial(object.__setattr__, self)
        set_("model", fam.base)
        set_("models", [first[method] for method in COMPARED_METHODS if method in first])
        set_("dose_models", dose)
        if worlds.resolve(self.world, fam.base).story is None:
            set_("planted_seeds", 0)

    def story(self):
        """The story source of the base model's world (its topics, their chain and the reward), or
        None for a world without one: then the census runs without its topic controls, feature
        labels and reward words."""
        from gremlinkit import worlds

        return worlds.resolve(self.world, self.model).story

    @classmethod
    def smoke(cls) -> "GremlinConfig":
        return cls(features="random-3", horizon=96, n_prompts=48, n_bootstrap=30, planted_seeds=1, dose_models=[],
                   dose_prompts=32, ablate_prompts=8, random_directions=2, control_prompts=8)

    def runner(self, subjects: dict | None = None):
        """Where the scans' units run (`gremlinkit.workers`): a context manager."""
        return scan_runner(self.backend, self.workers, self.address, self.threads, self.gpus_per_worker, subjects)

    def scan_config(self) -> persistence.PersistenceConfig:
        """The census scan itself: this config's `PersistenceConfig` fields, every live feature when
        ``full``, and the base model's SAE named outright, so every organism scanned later shares it."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(persistence.PersistenceConfig)}
        return persistence.PersistenceConfig(**{**shared, "features": "live" if self.full else self.features,
                                                "sae": self.sae_name()})

    def ablation_config(self, features: list[int], intervention: str = "ablate") -> persistence.PersistenceConfig:
        """The behavioural ablation: ``features`` zeroed (or set to their mean, ``"mean_ablate"``)
        where each first fires after token 8, for as long as the behavioural window reaches."""
        return dataclasses.replace(self.scan_config(), intervention=intervention, positions=[f"active:{ABLATE_START}"],
                                   horizon=persistence.BEHAVIOUR_WINDOW[1], n_prompts=self.ablate_prompts,
                                   features=features)


def min_detectable_ratio(census: pd.DataFrame) -> float:
    """The smallest tail that the census's rule could have detected, as a share of the edit's direct
    effect: per feature, the one-sided t threshold at the bar a single discovery must clear
    (``FDR_Q / features``) times the tail's standard error, over ``|effect_lag0|``; the median over
    features. A persistence weaker than this was out of the census's sight."""
    bar = persistence.FDR_Q / max(len(census), 1)
    need = student_t.ppf(1 - bar, (census.units - 1).clip(lower=1)) * census.tail_se
    return float((need / census.effect_lag0.abs()).median())


def counts(summary: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per model, over the census (controls left out): persistent features out of scanned, with a
    Wilson 95% interval, median half-life with a bootstrap interval over features, the fraction of
    edits that changed the continuation at all, and the smallest detectable tail
    (`min_detectable_ratio`)."""
    rows = []
    census = summary[summary.role == "census"] if "role" in summary else summary
    for model, g in census.groupby("model", sort=False):
        k, n = int(g.persistent.sum()), len(g)
        ci = binomtest(k, n).proportion_ci(method="wilson")
        hl = g.half_life.to_numpy()
        med_low, med_high = stats.median_ci(hl, seed)
        rows.append({"model": model, "persistent": k, "scanned": n, "fraction": k / n,
                     "fraction_low": float(ci.low), "fraction_high": float(ci.high),
                     "median_half_life": float(np.median(hl)),
                     "median_low": med_low, "median_high": med_high,
                     "divergence": float(g.divergence.mean()) if "divergence" in g else float("nan"),
                     "min_detectable_ratio": min_detectable_ratio(g) if "tail_se" in g else float("nan")})
    return pd.DataFrame(rows)


def fraction_difference(summary: pd.DataFrame, model: str, reference: str, n_bootstrap: int = 2000,
                        seed: int = 0) -> dict[str, float]:
    """Persistent fraction of ``model`` minus ``reference`` over the census, with a 95% bootstrap
    interval over features (paired: the same features are scanned in both)."""
    census = summary[summary.role == "census"] if "role" in summary else summary
    wide = census.pivot_table(index="feature", columns="model", values="persistent", aggfunc="first")
    diff = (wide[model].astype(float) - wide[reference].astype(float)).to_numpy()
    low, high = stats.mean_interval(diff, n_bootstrap, seed)
    return {"difference": float(diff.mean()), "low": low, "high": high}


def verdict(table: pd.DataFrame, rl: str = "toy-rl", controls: tuple[str, ...] = ("toy-base", "toy-sft"),
            control: pd.DataFrame | None = None, base: str = "toy-base", power: dict | None = None,
            scale: str = "At toy scale", figures: dict | None = None) -> tuple[str, dict[str, float]]:
    """Apply the decision rule; returns (the sentence for the notebook, the p-values). ``control`` is
    the natural control's summary (one row per model); if it is not persistent in ``base``, where
    its truth holds, the call is "no power". ``power`` (see `planted_power`) adds the planted
    controls: a sensitivity under ``MIN_SENSITIVITY`` is "no power" too, the sea feature's and the
    median over topics (`topic_power_summary`) where it is given. ``figures``
    (`natural.power`) adds the text-edit control and the random-direction null, with their own
    reasons for "no power" (`natural.no_power_reasons`)."""
    row = table.set_index("model")
    unseen = natural.no_power_reasons(figures or {})  # the text-edit control's and the null's
    if rl not in row.index or any(c not in row.index for c in controls):
        return (f"inconclusive: the comparison needs an on-policy RL model ({rl or 'none is scanned'}) beside "
                f"{', '.join(controls)}" + (f"; and this scan has no power: {'; '.join(unseen)}." if unseen else ".")
                + natural.describe(figures or {})), {"call": "no power" if unseen else "inconclusive"}
    k_rl, n_rl = row.loc[rl, "persistent"], row.loc[rl, "scanned"]
    more, fewer = {}, {}
    for c in controls:
        k, n = row.loc[c, "persistent"], row.loc[c, "scanned"]
        more[c] = fisher_exact([[k_rl, n_rl - k_rl], [k, n - k]], alternative="greater").pvalue
        fewer[c] = fisher_exact([[k_rl, n_rl - k_rl], [k, n - k]], alternative="less").pvalue
    seen = {} if control is None else dict(zip(control.model, control.persistent.astype(bool)))
    blind = [base] if base in seen and not seen[base] else []
    weak = power is not None and not power["sensitivity"] >= MIN_SENSITIVITY
    typical = power is not None and "median_topic_sensitivity" in power and \
        not power["median_topic_sensitivity"] >= MIN_SENSITIVITY
    reasons = ([f"the natural control is not found persistent in {', '.join(blind)}"] if blind else []) + \
        ([f"the planted control is detected in only {power['sensitivity']:.0%} of seeds"] if weak else []) + \
        ([f"a typical topic's driving features are detected in {power['median_topic_sensitivity']:.0%} of scans "
          f"where their persistence is planted (the median over {power['driving_topics']} topics; "
          f"{MIN_SENSITIVITY:.0%} needed)"] if typical else []) + unseen
    if reasons:
        call = "no power"
    elif all(p < 0.05 for p in more.values()):
        call = "support"
    elif any(p < 0.05 for p in fewer.values()):
        call = "contradict"
    else:
        call = "inconclusive"
    parts = [f"{m}: {int(row.loc[m, 'persistent'])}/{int(row.loc[m, 'scanned'])} persistent "
             f"(95% CI {row.loc[m, 'fraction_low']:.2f}-{row.loc[m, 'fraction_high']:.2f}), median half-life "
             f"{row.loc[m, 'median_half_life']:.2f} tokens"
             + (f", smallest detectable tail {100 * row.loc[m, 'min_detectable_ratio']:.2g}% of the direct effect"
                if pd.notna(row.loc[m].get("min_detectable_ratio", np.nan)) else "") for m in row.index]
    p_text = ", ".join(f"p(RL > {c}) = {more[c]:.3g}" for c in controls)
    if call == "no power":
        sentence = (f"{scale} this scan has no power: {'; '.join(reasons)}, so the counts say nothing about the "
                    "hypothesis. ")
    else:
        phrase = {"support": "support", "contradict": "contradict", "inconclusive": "are inconclusive about"}[call]
        sentence = f"{scale} the data {phrase} the gremlin hypothesis. "
    sentence += "; ".join(parts) + f". {p_text}."
    if seen:
        sentence += (" The natural control is found persistent in "
                     f"{', '.join(m for m, ok in seen.items() if ok) or 'no model'}.")
    if power is not None:
        mds = power["min_detectable_strength"]
        sentence += (f" Planted control: sensitivity {power['sensitivity']:.0%} over {power['seeds']} seeds; null "
                     f"false-positive rate {power['null_false_positive_rate']:.1%} of {power['null_tests']} tests; "
                     + (f"weakest planted persistence detected: eigenvalue {mds:g} per sentence "
                        f"({power['min_detectable_half_life']:.0f}-token half-life)." if mds == mds
                        else "no planted strength is detected in 80% of seeds."))
    if power is not None and "median_topic_sensitivity" in power:
        sentence += topic_power_sentence(power)
    sentence += natural.describe(figures or {})
    return sentence, {**{f"p_rl_more_than_{c}": p for c, p in more.items()}, "call": call}


def topic_power_sentence(power: dict[str, Any]) -> str:
    """The verdict's words on the power over every topic (`topic_power_summary`'s figures)."""
    p, mde = power, power["min_detectable_direct_effect"]
    smallest = (f"An edit is seen in {MIN_SENSITIVITY:.0%} of planted scans when it raises its topic's words in the "
                f"next sentence by {mde:.3f} or more." if mde == mde else
                f"No size of edit is seen in {MIN_SENSITIVITY:.0%} of planted scans.")
    return (f" Over every topic (each topic's driving features in {PLANTED[-1]}): median sensitivity "
            f"{p['median_topic_sensitivity']:.0%} (95% CI {p['median_topic_sensitivity_low']:.0%}-"
            f"{p['median_topic_sensitivity_high']:.0%}, {p['driving_topics']} topics), null "
            f"{p['topic_null_false_positive_rate']:.1%} of {p['topic_null_false_positive_rate_tests']} driving scans; "
            f"the topic's own words over the tail are detected in a median {p['median_topic_state_sensitivity']:.0%}, "
            f"null {p['topic_state_null_false_positive_rate_all']:.1%}. {smallest}")


@dataclass
class GremlinResults(Result):
    scan: pd.DataFrame
    summary: pd.DataFrame  # one row per (model, feature); ``role`` is "census" or "natural control"
    census: pd.DataFrame  # the tidy census table written to census.csv
    counts: pd.DataFrame
    verdict: str
    tests: dict
    control: pd.DataFrame  # the control topic feature's summary per model (empty without one)
    control_truth: float  # the corpus's topic half-life, in tokens
    planted: pd.DataFrame  # the planted controls' scans, one row per (model, feature, seed); empty if skipped
    power: dict | None  # `planted_power` of them (its "dose" is the dose table), None if skipped
    rl_dose: pd.DataFrame  # `rl_dose_series`: one row per organism; empty if skipped
    controls: pd.DataFrame = field(default_factory=pd.DataFrame)  # `model_controls`: text edit and null per model
    figures: dict = field(default_factory=dict)  # `natural.power` of ``controls`` in the base model
    self_repair: pd.DataFrame = field(default_factory=pd.DataFrame)  # `natural.self_repair` per model, edit, prompt
    topic_power: pd.DataFrame = field(default_factory=pd.DataFrame)  # `topic_power`: every topic's candidates
    metrics: dict = field(default_factory=dict)


MIN_SENSITIVITY = 0.8  # the planted control must be detected in this share of seeds
PLANTED = ("toy-planted-null", "toy-planted-50", "toy-planted-90")  # from null to strongest


def planted_truth(name: str, base_name: str, story) -> tuple[float, float]:
    """An organism's topic-chain eigenvalue and its topic's half-life in tokens: the corpus's own
    for the base model, the card's planted truth for a planted organism."""
    from gremlinkit import providers

    if name == base_name:
        return story.topic_eigenvalue(story.p_topic_switch), story.topic_half_life()
    card = providers.card(name)["truth"]
    return card["eigenvalue"], card["half_life_tokens"]


POWER_CANDIDATES = 3  # per topic: its feature and the next candidates by the same score
DRIVE_P = 0.05  # a candidate drives its topic where its direct effect is positive at this level


def topic_power(cfg: GremlinConfig, base, census_size: int, load=None, runner=None,
                organisms: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The census's power over every topic, not its best feature's: each topic's
    ``POWER_CANDIDATES`` features (`persistence.topic_candidates`) scanned at the census's settings in
    each planted organism and in the base model, once per scan seed. Per (topic, candidate,
    organism, seed): its *direct* effect (the change in the topic's word rate over the first
    sentence after the edit, `persistence.behaviour`, with its p-value), whether it *drives* its topic
    (that effect positive at ``DRIVE_P``), whether the census's rule detects its persistence (its
    p-value at the census's bar), and its half-life beside the organism's truth. ``organisms``:
    which of the planted organisms and the base to scan (all by default)."""
    from gremlinkit import load as load_subject

    load = load or (lambda name: load_subject(name, sae=cfg.sae_name(), **cfg.load_kwargs()))
    base_name, story = Path(cfg.model).name, cfg.story()
    topics = list(story.topics)
    candidates = persistence.topic_candidates(base, topics, POWER_CANDIDATES, seed=cfg.seed)
    features = sorted({f for fs in candidates.values() for f in fs})
    words = {t: [int(i) for i in base.tokenizer.convert_tokens_to_ids([*story.topics[t]["nouns"],
                                                                        *story.topics[t]["adjs"]])] for t in topics}
    first = round(story.topic_persistence(story.generate(200, seed=0))["mean_sentence_tokens"])
    bar = persistence.FDR_Q / (census_size + 1)
    rows = []
    for name in organisms or (*PLANTED, base_name):
        eigen, truth = planted_truth(name, base_name, story)
        subject = base if name == base_name else load(name)
        for seed in tqdm(range(cfg.planted_seeds), desc=f"topic power: {name}", unit="seed"):
            scan_cfg = dataclasses.replace(cfg.scan_config(), model=name, models=[], features=features, seed=seed)
            scan = persistence.scan(scan_cfg, {name: subject}, runner)
            summary = persistence.summarize(scan, cfg.n_bootstrap, seed).set_index("feature")
            horizon = int(scan.lag.max())
            for topic, fs in candidates.items():
                edits = scan[scan.feature.isin(fs)]
                direct = persistence.behaviour(edits, words[topic], (1, first)).set_index("feature")
                tail = persistence.behaviour(edits, words[topic], (stats.tail_start(horizon), horizon)) \
                    .set_index("feature")
                for rank, f in enumerate(fs):
                    effect, p = direct.loc[f, "word_rate_delta"], direct.loc[f, "word_rate_delta_p"]
                    state, state_p = tail.loc[f, "word_rate_delta"], one_sided(*tail.loc[f, ["word_rate_delta",
                                                                                           "word_rate_delta_p"]])
                    r = summary.loc[f]
                    rows.append({"topic": topic, "candidate": rank, "feature": f, "model": name, "eigenvalue": eigen,
                                 "seed": seed, "direct_effect": effect, "direct_p": p,
                                 "drives": bool(effect > 0 and p <= DRIVE_P), "p_value": r.p_value,
                                 "detected": bool(r.p_value <= bar), "half_life": r.half_life,
                                 "half_life_low": r.half_life_low, "half_life_high": r.half_life_high,
                                 "half_life_censored": r.half_life_censored, "truth_half_life": truth,
                                 "tail_word_rate_delta": state, "tail_word_p": state_p,
                                 "topic_state_detected": bool(state_p <= bar)})
    return pd.DataFrame(rows)


def one_sided(delta: float, p_two_sided: float) -> float:
    """The one-sided p-value that an effect is positive, from its two-sided t-test's ``p_two_sided``."""
    return p_two_sided / 2 if delta > 0 else 1 - p_two_sided / 2


def topic_power_table(power: pd.DataFrame) -> pd.DataFrame:
    """Per organism and topic, from `topic_power`: the (candidate, seed) scans that drive the topic,
    the share of them the census detects (the topic's *sensitivity* where the organism's truth
    persists, its false-positive rate in the null), their median half-life and the truth's."""
    driving = power[power.drives]
    table = driving.groupby(["model", "eigenvalue", "topic"], as_index=False).agg(
        driving=("detected", "size"), detected=("detected", "mean"), median_half_life=("half_life", "median"),
        truth_half_life=("truth_half_life", "first"), topic_state_detected=("topic_state_detected", "mean"))
    return table.sort_values(["eigenvalue", "topic"], ascending=[False, True], ignore_index=True)


def topic_power_summary(power: pd.DataFrame, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The census's power from `topic_power`: in the strongest planted organism, the median over
    topics of each topic's sensitivity among the scans that drive it, with a bootstrap interval
    over topics; the planted null's false-positive rate among its driving scans (where the truth
    applies) and over every scan; and the candidates that drive nothing in the strongest organism,
    which are no evidence either way. The same figures for the topic's own state (its word rate over
    the tail, ``topic_state``): where that is detected and the feature is not, the chain persists
    and the feature's statistic misses it."""
    table, scans = topic_power_table(power), power[power.model == PLANTED[-1]]
    strong, null = table[table.model == PLANTED[-1]], power[power.model == PLANTED[0]]
    out: dict[str, Any] = {"driving_topics": len(strong), "topics": int(power.topic.nunique())}
    rng = np.random.default_rng(seed)
    for read, name in (("detected", "topic"), ("topic_state_detected", "topic_state")):
        values = strong[read].to_numpy()
        boots = np.median(rng.choice(values, (n_bootstrap, len(values))), axis=1) if len(values) else [np.nan]
        out.update({f"median_{name}_sensitivity": float(np.median(values)) if len(values) else float("nan"),
                    f"median_{name}_sensitivity_low": float(np.quantile(boots, 0.025)),
                    f"median_{name}_sensitivity_high": float(np.quantile(boots, 0.975))})
        for key, rows in ((f"{name}_null_false_positive_rate", null[null.drives]),
                          (f"{name}_null_false_positive_rate_all", null)):
            ci = binomtest(int(rows[read].sum()), max(len(rows), 1)).proportion_ci(method="wilson")
            out.update({key: float(rows[read].mean()) if len(rows) else float("nan"), f"{key}_low": float(ci.low),
                        f"{key}_high": float(ci.high), f"{key}_tests": len(rows)})
    out["min_detectable_direct_effect"] = min_detectable_direct_effect(scans)
    out["non_driving"] = [f"{t}:{f}" for (t, f), d in scans.groupby(["topic", "feature"]).drives.any().items()
                          if not d]
    return out


def min_detectable_direct_effect(power: pd.DataFrame, min_scans: int = 5) -> float:
    """The smallest direct effect ``d`` (a change in the topic's word rate over the next sentence)
    such that the driving scans of ``power`` whose edit moves the topic by at least ``d`` are
    detected in ``MIN_SENSITIVITY`` of cases, over at least ``min_scans`` scans (NaN if none is)."""
    driving = power[power.drives].sort_values("direct_effect", ascending=False)
    rate = driving.detected.cumsum().to_numpy() / np.arange(1, len(driving) + 1)
    ok = [i for i in range(min_scans - 1, len(driving)) if rate[i] >= MIN_SENSITIVITY]
    return float(driving.direct_effect.iloc[max(ok)]) if ok else float("nan")


def planted_rows(power: pd.DataFrame, control: int) -> pd.DataFrame:
    """The planted controls' table, read from `topic_power`'s scans: the control feature in every
    planted organism and the base, and every topic's own feature in the null, one row per (model,
    feature, seed)."""
    own = power[(power.candidate == 0) & ((power.model == PLANTED[0]) | (power.feature == control))]
    return own.drop_duplicates(["model", "feature", "seed"])[
        ["model", "eigenvalue", "truth_half_life", "feature", "topic", "seed", "p_value", "detected", "half_life",
         "half_life_low", "half_life_high", "half_life_censored"]].reset_index(drop=True)


def planted_power(planted: pd.DataFrame, control: int) -> dict[str, float]:
    """Sensitivity, null false-positive rate (with Wilson intervals), the dose table's detection
    rates, and the minimum detectable strength, from `planted_rows`."""
    own = planted[planted.feature == control]
    dose = own.groupby(["eigenvalue", "model"], as_index=False).agg(
        detection_rate=("detected", "mean"), median_half_life=("half_life", "median"),
        truth_half_life=("truth_half_life", "first"), seeds=("seed", "nunique"))
    strongest = own[own.model == PLANTED[-1]]
    null = planted[planted.model == PLANTED[0]]
    sens = binomtest(int(strongest.detected.sum()), len(strongest)).proportion_ci(method="wilson")
    fpr = binomtest(int(null.detected.sum()), len(null)).proportion_ci(method="wilson")
    seen = dose[(dose.eigenvalue > 0) & (dose.detection_rate >= MIN_SENSITIVITY)].sort_values("eigenvalue")
    return {"sensitivity": float(strongest.detected.mean()), "sensitivity_low": float(sens.low),
            "sensitivity_high": float(sens.high), "seeds": int(strongest.seed.nunique()),
            "null_false_positive_rate": float(null.detected.mean()), "null_false_positive_rate_low": float(fpr.low),
            "null_false_positive_rate_high": float(fpr.high), "null_tests": len(null),
            "min_detectable_strength": float(seen.eigenvalue.iloc[0]) if len(seen) else float("nan"),
            "min_detectable_half_life": float(seen.truth_half_life.iloc[0]) if len(seen) else float("nan"),
            "dose": dose}


def organism(name: str) -> dict[str, Any]:
    """How a family's organism was trained, from its family (`gremlinkit.providers.Family`): method,
    RL steps, reward horizon, reward, KL to the base and relative weight change (NaN where its card
    has none; "other" for a model no family has)."""
    from gremlinkit import providers
    from gremlinkit.errors import UnknownArtefactError

    try:
        member = providers.family(name).member(name)
    except UnknownArtefactError:
        member = providers.Member(name, "other", {}, False)
    return {"model": name, "method": member.method,
            **{k: member.figure(k) for k in ("rl_steps", "horizon", "reward", "kl_to_base", "weight_change")}}


DOSE_BOOTSTRAP = 2000  # resamples of features for the tail ratio's interval


def dose_row(name: str, summary: pd.DataFrame, control: int | None, n_bootstrap: int, seed: int) -> dict:
    census = summary[summary.feature != control]
    ratio = (census.tail_effect / census.effect_lag0).to_numpy()
    low, high = stats.mean_interval(ratio, n_bootstrap, seed)
    k, n = int(census.persistent.sum()), len(census)
    ci = binomtest(k, n).proportion_ci(method="wilson")
    row = {**organism(name), "tail_ratio": float(ratio.mean()), "tail_ratio_low": low,
           "tail_ratio_high": high, "persistent": k, "scanned": n,
           "persistent_fraction": k / n, "persistent_fraction_low": float(ci.low),
           "persistent_fraction_high": float(ci.high)}
    if control is not None:
        c = summary[summary.feature == control].iloc[0]
        row.update(control_tail_ratio=float(c.tail_effect / c.effect_lag0), control_half_life=float(c.half_life),
                   control_persistent=bool(c.persistent))
    return row


def rl_dose_series(cfg: GremlinConfig, scan: pd.DataFrame, features: list[int], control: int | None,
                   load=None, runner=None) -> pd.DataFrame:
    """The persistence statistic of every main model (their scan's first ``dose_prompts`` prompts)
    and every dose organism (scanned alike), one row per organism with its training (`organism`).
    ``runner`` runs the scans' units (`gremlinkit.workers`; default: in this process)."""
    from gremlinkit import load as load_subject

    load = load or (lambda name: load_subject(name, sae=cfg.sae_name(), **cfg.load_kwargs()))
    scan_cfg = dataclasses.replace(cfg.scan_config(), n_prompts=cfg.dose_prompts,
                                   features=features + ([control] if control is not None else []))
    rows = []
    head = persistence.summarize(scan[scan.prompt_id < cfg.dose_prompts], cfg.n_bootstrap, cfg.seed)
    for model, g in head.groupby("model", sort=False, observed=True):
        rows.append(dose_row(str(model), g, control, DOSE_BOOTSTRAP, cfg.seed))
    for name in cfg.dose_models:
        one = persistence.scan(dataclasses.replace(scan_cfg, model=name, models=[]), {name: load(name)}, runner)
        rows.append(dose_row(Path(name).name, persistence.summarize(one, cfg.n_bootstrap, cfg.seed), control,
                              DOSE_BOOTSTRAP, cfg.seed))
    return pd.DataFrame(rows)


def reward_word_ids(tokenizer, story) -> list[int]:
    """Token ids of the RL reward's sea words (the world's ``reward_words``)."""
    return [int(i) for i in tokenizer.convert_tokens_to_ids(sorted(story.reward_words))]


BEHAVIOUR_COLUMNS = ["prevalence_delta", "prevalence_delta_p", "word_rate_delta", "word_rate_delta_p"]
# The behavioural ablations, side by side: column prefix -> the scan's intervention (to zero, and to the
# feature's mean over the prompts' tokens, which keeps what the feature usually contributes)
ABLATIONS = {"ablate": "ablate", "ablate_to_mean": "mean_ablate"}
CENSUS_COLUMNS = ["model", "role", "feature", "half_life", "half_life_lo", "half_life_hi", "half_life_censored",
                  "tail_effect", "p_value", "q_value", "persistent", "divergence", *BEHAVIOUR_COLUMNS,
                  *[f"{a}_{c}" for a in ABLATIONS for c in ["edits", "divergence", *BEHAVIOUR_COLUMNS]], "top_label",
                  "label_purity"]


def census_table(summary: pd.DataFrame, labels: pd.DataFrame, added: pd.DataFrame,
                 ablated: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """The census as one tidy table: a row per (model, feature), with its behavioural form
    (`persistence.behaviour`) after the scan's edit (``added``) and after each ablation where it
    fires (``ablated``, keyed by an `ABLATIONS` prefix: columns ``ablate_*`` and
    ``ablate_to_mean_*``; NaN when skipped), and the label each feature fires on most purely in
    held-out stories (`zoo_tour.feature_summary`)."""
    top = labels.assign(top_label=labels.label + "=" + labels.label_value)[["feature", "top_label", "purity"]]
    out = summary.astype({"model": str}).rename(columns={"half_life_low": "half_life_lo",
                                                          "half_life_high": "half_life_hi"})
    out = out.merge(added.astype({"model": str})[["model", "feature", *BEHAVIOUR_COLUMNS]], on=["model", "feature"],
                    how="left")
    for prefix in ABLATIONS:
        table = (ablated or {}).get(prefix)
        if table is not None and not table.empty:
            out = out.merge(table.astype({"model": str}).rename(
                columns={c: f"{prefix}_{c}" for c in ["edits", "divergence", *BEHAVIOUR_COLUMNS]}),
                on=["model", "feature"], how="left")
        else:
            out = out.assign(**{f"{prefix}_edits": 0, f"{prefix}_divergence": np.nan},
                             **{f"{prefix}_{c}": np.nan for c in BEHAVIOUR_COLUMNS})
        out[f"{prefix}_edits"] = out[f"{prefix}_edits"].fillna(0).astype(int)
    out = out.merge(top.rename(columns={"purity": "label_purity"}), on="feature", how="left")
    out["top_label"] = out.top_label.fillna("")
    return out[CENSUS_COLUMNS].sort_values(["model", "role", "feature"], ignore_index=True)


NO_LABELS = pd.DataFrame(columns=["feature", "label", "label_value", "purity"])  # a world without labelled stories


def roles(cfg: GremlinConfig, family) -> tuple[str | None, tuple[str, ...]]:
    """The scanned model trained by on-policy RL (the first, by ``family``'s record; None if none
    is, or there is no family) and the models it is compared with: every other scanned model."""
    names = [Path(m).name for m in cfg.scanned]
    rl = None if family is None else next(
        (m for m in names if m in family.names and family.member(m).method == "on-policy RL"), None)
    return rl, tuple(m for m in names if m != rl)


def check_models(cfg: GremlinConfig):
    """The base model's family, once every model the run names is known and built; else one error
    naming each unknown model and what is accepted. None for a model no provider has (a user's own
    checkpoint): its models are scanned as given, with no record of how they were trained."""
    from gremlinkit import providers
    from gremlinkit.errors import UnknownArtefactError

    if providers.find(cfg.model) is None:
        if cfg.dose_models:
            raise ConfigError(f"parameter dose_models={cfg.dose_models!r}: the dose series is a family's, and "
                              f"{cfg.model!r} has none; set dose_models=[]")
        return None
    try:
        family = providers.family(cfg.model)  # before any scan: a missing organism fails now, saying how to build it
    except UnknownArtefactError:
        return None
    named = [*cfg.scanned, *cfg.dose_models]
    unknown = [m for m in named if m not in family.names and providers.find(m) is None and not Path(m).is_dir()
               and m.count("/") != 1]
    if unknown:
        raise ConfigError(f"unknown model(s) {', '.join(map(repr, unknown))}: name a model of the {family.name} "
                          f"family ({', '.join(family.names)}), a local model directory or a hub id (org/name)")
    foreign = [m for m in named if m not in family.names and providers.find(m) is not None]
    if foreign:
        raise ConfigError(f"model(s) {', '.join(map(repr, foreign))} are not in the {family.name} family of "
                          f"{cfg.model!r}, whose SAE the census shares; its members: {', '.join(family.names)} "
                          "(dose_models=[] skips the dose series)")
    family.require([m for m in named if m in family.names])
    return family


def null_directions(cfg: GremlinConfig, base, census: list[int]) -> tuple[torch.Tensor, float]:
    """The random-direction null's directions and the norm they are pushed with: the census edits'
    mean (``scale`` times the census features' mean decoder norm)."""
    norm = cfg.scale * float(base.sae.W_dec.detach()[census].float().norm(dim=1).mean())
    return natural.random_directions(cfg.random_directions, base.d_model, cfg.seed), norm


def model_self_repair(cfg: GremlinConfig, subjects: dict, census: list[int], prompts: list, positions: list
                      ) -> pd.DataFrame:
    """`natural.self_repair` on every scanned model: the census's edits and the random directions
    at the census's first ``repair_prompts`` prompts' edit positions (empty when 0)."""
    if not cfg.repair_prompts:
        return pd.DataFrame(columns=natural.REPAIR_COLUMNS)
    directions, norm = null_directions(cfg, subjects[cfg.model], census)
    n = min(cfg.repair_prompts, len(prompts))
    parts = [natural.self_repair(subjects.get(m) or persistence.load_subject(cfg.scan_config(), m), Path(m).name,
                                 prompts[:n], [p[0] for p in positions[:n]], census, cfg.scale, directions, norm)
             for m in tqdm(cfg.scanned, desc="self-repair", unit="model")]
    return pd.concat(parts, ignore_index=True)


def model_controls(cfg: GremlinConfig, subjects: dict, text_feature: int | None, census: list[int],
                   prompts: list, positions: list, words: list[int]) -> pd.DataFrame:
    """On every scanned model: where nothing is planted, the text-edit control of ``text_feature``
    and its feature edit; and the random-direction null, on the census's first ``control_prompts``
    prompts at its edit positions, pushed with the census edits' mean norm
    (`natural.summarize`'s table; empty when both are off)."""
    chunk = min(cfg.chunk, 64)  # each generation keeps every feature at every step: bound its rows
    directions, norm = null_directions(cfg, subjects[cfg.model], census)
    n = min(cfg.control_prompts, len(prompts))
    tables: dict[str, list] = {}
    for model in tqdm(cfg.scanned, desc="controls", unit="model", disable=text_feature is None and
                      not cfg.random_directions):
        subject = subjects.get(model) or persistence.load_subject(cfg.scan_config(), model)
        name = Path(model).name
        found = {} if text_feature is None else natural.feature_controls(
            subject, name, text_feature, cfg.scale, cfg.control_prompts, cfg.horizon, cfg.seed, cfg.temperature,
            chunk, cfg.control_topic, steer=(natural.steer_site(subject), natural.STEER_COEFF))
        if cfg.random_directions:
            found["random direction"] = natural.direction_null(
                subject, name, prompts[:n], [p[0] for p in positions[:n]], directions, norm, cfg.horizon, cfg.seed,
                cfg.temperature, chunk)
        for role, table in found.items():
            tables.setdefault(role, []).append(table)
    if not tables:
        return pd.DataFrame(columns=natural.COLUMNS)
    return natural.summarize({r: pd.concat(t, ignore_index=True) for r, t in tables.items()},
                             persistence.FDR_Q / (len(census) + 1), words, cfg.n_bootstrap, cfg.seed)


def run(cfg: GremlinConfig, subjects: dict | None = None) -> GremlinResults:
    """The census, its natural and planted controls, the dose series and the behavioural form. The
    scans' units run where ``cfg.backend`` says; ``subjects`` are loaded models to use (the others
    are loaded where their units run)."""
    family = check_models(cfg)
    scan_cfg = cfg.scan_config()
    subjects = dict(subjects or {})
    if cfg.model not in subjects:
        subjects[cfg.model] = persistence.load_subject(scan_cfg, cfg.model)
    base = subjects[cfg.model]
    prompts, positions = persistence.scan_prompts(scan_cfg, base)
    census = persistence.choose_features(base, prompts, scan_cfg.features, cfg.seed)
    story = cfg.story()
    controls = [persistence.topic_feature(base, cfg.control_topic, seed=cfg.seed)] if cfg.control_topic and story \
        else []  # where nothing is planted, the control runs on its own prompts (`model_controls`)
    text_feature = natural.topic_feature(base, cfg.control_topic, seed=cfg.seed) if cfg.control_topic and not story \
        else None
    census = [f for f in census if f not in controls]  # a control is scanned once, and not counted
    words = reward_word_ids(base.tokenizer, story) if story else \
        sorted(stories.topic_token_ids(base.tokenizer, cfg.control_topic or stories.REWARD_TOPIC))
    planted, power, dose, ablated, topics = pd.DataFrame(), None, pd.DataFrame(), None, pd.DataFrame()
    with cfg.runner(subjects) as runner:
        runner.preload(scan_cfg, cfg.scanned)  # every worker loads the models now: one that cannot fails here
        scan = persistence.scan(dataclasses.replace(scan_cfg, features=census + controls), subjects, runner)
        if cfg.planted_seeds:  # every topic's candidates; the planted controls are the control's rows
            topics = topic_power(cfg, base, len(census), runner=runner)
            planted = planted_rows(topics, controls[0])
            power = {**planted_power(planted, controls[0]), **topic_power_summary(topics, seed=cfg.seed)}
        if cfg.dose_models:
            dose = rl_dose_series(cfg, scan, census, controls[0] if controls else None, runner=runner)
        if cfg.ablate_prompts:
            ablated = {prefix: persistence.scan(cfg.ablation_config(census + controls, kind), subjects, runner)
                       for prefix, kind in ABLATIONS.items()}
    summary = persistence.summarize(scan, cfg.n_bootstrap, cfg.seed)
    order = {Path(m).name: i for i, m in enumerate(cfg.scanned)}  # base first, as the models were given
    summary = summary.sort_values(["model", "feature"], key=lambda c: c.map(order) if c.name == "model" else c,
                                  ignore_index=True)
    summary.insert(2, "role", np.where(summary.feature.isin(controls), "natural control", "census"))
    table = counts(summary, cfg.seed)
    control = summary[summary.role == "natural control"].reset_index(drop=True)
    checks = model_controls(cfg, subjects, text_feature, census, prompts, positions, words)
    repair = model_self_repair(cfg, subjects, census, prompts, positions)
    figures = natural.power(checks, Path(cfg.model).name) if len(checks) else {}
    added = persistence.behaviour(scan, words)
    ablated = {k: persistence.behaviour(t, words) for k, t in ablated.items()} if ablated is not None else None
    rl, others = roles(cfg, family)
    sentence, tests = verdict(table, rl, others, control=control, base=Path(cfg.model).name, power=power,
                              scale="At toy scale" if family is not None and family.name == "toy" else
                              f"In the {family.name} family" if family is not None else "On these models",
                              figures=figures)
    labels = zoo_tour.feature_summary(*zoo_tour.corpus_features(base, zoo_tour.heldout_corpus(200, cfg.seed, story),
                                                                story)) if story else NO_LABELS
    res = GremlinResults(scan, summary, census_table(summary, labels, added, ablated), table, sentence, tests,
                         control, story.topic_half_life() if story else float("nan"), planted, power, dose, checks,
                         figures, repair, topics)
    res.metrics.update(metrics(res))
    return res


def write(res: GremlinResults, output_dir: str) -> None:
    """The run's tables (summary, counts, planted, rl_dose as parquet; census.csv, controls.csv) and metrics.json,
    each written atomically into ``output_dir``."""
    for name in ("summary", "counts", "planted", "rl_dose"):
        write_table(getattr(res, name), Path(output_dir) / f"{name}.parquet")
    write_census(res, output_dir)
    atomic_write_text(Path(output_dir) / "controls.csv", res.controls.to_csv(index=False))
    atomic_write_text(Path(output_dir) / "self_repair.csv", res.self_repair.to_csv(index=False))
    atomic_write_text(Path(output_dir) / "power.csv", res.topic_power.to_csv(index=False))
    write_metrics(output_dir, res.metrics)


def write_census(res: GremlinResults, output_dir: str) -> Path:
    """``output_dir/census.csv``, written atomically."""
    path = Path(output_dir) / "census.csv"
    atomic_write_text(path, res.census.to_csv(index=False))
    return path


def metrics(res: GremlinResults) -> dict[str, float]:
    out = {}
    for r in res.counts.itertuples():
        out[f"{r.model}_census_features"] = r.scanned
        out[f"{r.model}_persistent"] = r.persistent
        out[f"{r.model}_persistent_fraction"] = r.fraction
        out[f"{r.model}_persistent_fraction_low"] = r.fraction_low
        out[f"{r.model}_persistent_fraction_high"] = r.fraction_high
        out[f"{r.model}_median_half_life"] = r.median_half_life
        out[f"{r.model}_divergence_fraction"] = r.divergence
        out[f"{r.model}_min_detectable_ratio"] = r.min_detectable_ratio
    for model, g in res.summary[res.summary.role == "census"].groupby("model", sort=False):
        out[f"{model}_mean_abs_effect_lag1"] = float(g.effect_lag1.abs().mean())  # non-zero when edits act
    for r in res.control.itertuples():
        out[f"{r.model}_control_half_life"] = r.half_life
        out[f"{r.model}_control_persistent"] = int(r.persistent)
        out[f"{r.model}_control_q_value"] = r.q_value
    models = list(res.counts.model)
    out.update(res.figures)
    for r in res.controls[res.controls.role != "random direction"].itertuples():
        out[f"{r.model}_{r.role.replace(' ', '_')}_half_life"] = r.half_life
        out[f"{r.model}_{r.role.replace(' ', '_')}_detected"] = int(r.detected)
    for model, g in res.controls[res.controls.role == "random direction"].groupby("model", sort=False):
        out[f"{model}_random_direction_rate"] = float(g.detected.mean())
    if len(res.self_repair):
        for r in natural.repair_summary(res.self_repair).itertuples():
            role = r.role.replace(" ", "_")
            out[f"{r.model}_self_repair_survival_{role}"] = r.survival
            out[f"{r.model}_self_repair_logit_ratio_{role}"] = r.logit_ratio
    if not res.control.empty:
        first = res.control[res.control.model == models[0]].iloc[0]
        out["natural_control_half_life"] = first.half_life
        out["natural_control_half_life_low"] = first.half_life_low
        out["natural_control_half_life_high"] = first.half_life_high
        out["natural_control_truth"] = res.control_truth
        out["natural_control_detected"] = int(first.persistent)
        acts = res.census[(res.census.role == "natural control") & (res.census.model == models[0])].iloc[0]
        for k in BEHAVIOUR_COLUMNS + [f"ablate_{c}" for c in BEHAVIOUR_COLUMNS]:
            out[f"natural_control_{k}"] = float(acts[k])  # the behavioural form, where the truth says it persists
    for m in models[1:]:
        d = fraction_difference(res.summary, m, models[0])
        out.update({f"{m}_minus_{models[0]}_persistent_fraction{k}": v
                    for k, v in (("", d["difference"]), ("_low", d["low"]), ("_high", d["high"]))})
    if res.power is not None:
        out.update({("positive_control_" + k if k.startswith("sensitivity") else k): v
                    for k, v in res.power.items() if k not in ("dose", "non_driving")})
        for r in res.power["dose"].itertuples():
            out[f"dose_{r.model}_detection_rate"] = r.detection_rate
            out[f"dose_{r.model}_median_half_life"] = r.median_half_life
    if len(res.topic_power):
        for r in topic_power_table(res.topic_power).itertuples():
            out[f"topic_sensitivity_{r.model}_{r.topic}"] = r.detected
    for r in res.rl_dose.itertuples():
        for k in ("tail_ratio", "tail_ratio_low", "tail_ratio_high", "persistent_fraction", "reward", "kl_to_base"):
            if pd.notna(getattr(r, k)):  # toy-base has no reward of its own on a card
                out[f"rl_dose_{r.model}_{k}"] = getattr(r, k)
    census = res.census[res.census.role == "census"]
    for model, g in census.groupby("model", sort=False):
        out[f"{model}_mean_prevalence_delta"] = float(g.prevalence_delta.mean())
        out[f"{model}_mean_word_rate_delta"] = float(g.word_rate_delta.mean())
        for prefix in ABLATIONS:
            out[f"{model}_mean_{prefix}_prevalence_delta"] = float(g[f"{prefix}_prevalence_delta"].mean())
            out[f"{model}_mean_{prefix}_word_rate_delta"] = float(g[f"{prefix}_word_rate_delta"].mean())
            out[f"{model}_{prefix}_divergence"] = float(g[f"{prefix}_divergence"].mean())
    out.update({k: v for k, v in res.tests.items() if k != "call"})
    call = res.tests.get("call")
    out["verdict"] = call
    out["verdict_support"] = {"support": 1, "contradict": -1}.get(call, 0)  # 0: inconclusive or no power
    out["verdict_has_power"] = int(call != "no power")
    return out
