"""The gremlin comparison: does on-policy RL breed persistent features that off-policy SFT does not?

The same persistence scan (on-policy, `gremlinkit.experiments.persistence`) runs on toy-base,
toy-sft and toy-rl with the *same* feature ids and toy-base's SAE shared by all three, so a feature
means the same direction in every model. Features are drawn at random among live ones, not chosen
for being interesting.

**Decision rule, fixed before looking.** The hypothesis predicts more persistent features in
toy-rl than in toy-base, and more than in toy-sft. Each comparison is a one-sided Fisher exact test
on the counts of persistent features (``persistent`` as defined in the persistence module) at
alpha = 0.05. The data *support* the hypothesis only if both tests pass; they *contradict* it if
toy-rl has fewer persistent features than either control with p < 0.05 in the other direction;
otherwise they are *inconclusive*. All of this needs power: the positive control (the feature that
best marks ``control_topic``, which persists by the corpus's own topic chain) is scanned the same way
in every model, and where it is not found persistent the call is *no power*, whatever the counts.

**Layer localisation.** Fine-tuning is said to edit mostly later layers. Per block, the relative
weight change ``||W_ft - W_base|| / ||W_base||`` and the relative change of ``hook_resid_post`` on
held-out stories show where each fine-tune acted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import binomtest, bootstrap, fisher_exact

from gremlinkit.sites import SiteMap
from gremlinkit.experiments import persistence
from gremlinkit.params import Placement, check_choice, check_range
from gremlinkit.zoo import corpus
from gremlinkit.zoo.lm import encode_docs


@dataclass(frozen=True)
class GremlinConfig(Placement):
    models: list = field(default_factory=lambda: ["toy-base", "toy-sft", "toy-rl"])  # base first
    sae: str = "toy-base-sae"  # one SAE shared by every model
    features: Any = "random-32"  # matched features: "random-N", "top-N" or a list of ids
    intervention: str = "add"  # "ablate" or "add"
    scale: float = 8.0  # added to the feature when intervention is "add"
    positions: list = field(default_factory=lambda: ["sentence_end:24"])  # edit positions
    horizon: int = 32  # tokens followed after the edit
    n_prompts: int = 24  # held-out stories per feature
    n_bootstrap: int = 200  # bootstrap resamples for half-life intervals
    control_topic: str = "sea"  # positive control: this topic's feature, scanned the same way ("" for none)
    seed: int = 0  # seeds prompts, features, sampling noise and the bootstrap
    output_dir: str = "output/04_gremlin_comparison"  # where chunks, tables and metrics go

    def __post_init__(self) -> None:
        check_range("n_prompts", self.n_prompts, 2, 4096)
        check_choice("control_topic", self.control_topic, ["", *corpus.TOPICS])
        self.scan_config()  # validates the shared fields

    @classmethod
    def smoke(cls) -> "GremlinConfig":
        return cls(features="random-4", positions=[8], horizon=12, n_prompts=4, n_bootstrap=30)

    def scan_config(self) -> persistence.PersistenceConfig:
        return persistence.PersistenceConfig(
            models=list(self.models), sae=self.sae, features=self.features, intervention=self.intervention,
            scale=self.scale, positions=list(self.positions), horizon=self.horizon, n_prompts=self.n_prompts,
            mode="on_policy", n_bootstrap=self.n_bootstrap, seed=self.seed, output_dir=self.output_dir,
            device=self.device, dtype=self.dtype)


def counts(summary: pd.DataFrame) -> pd.DataFrame:
    """Per model: persistent features out of scanned, with a Wilson 95% interval, and median half-life
    with a bootstrap interval over features."""
    rows = []
    for model, g in summary.groupby("model", sort=False):
        k, n = int(g.persistent.sum()), len(g)
        ci = binomtest(k, n).proportion_ci(method="wilson")
        hl = g.half_life.to_numpy()
        med = bootstrap((hl,), np.median, n_resamples=1000, method="percentile", random_state=0) \
            if np.ptp(hl) > 0 else None
        rows.append({"model": model, "persistent": k, "scanned": n, "fraction": k / n,
                     "fraction_low": float(ci.low), "fraction_high": float(ci.high),
                     "median_half_life": float(np.median(hl)),
                     "median_low": float(med.confidence_interval.low) if med else float(hl[0]),
                     "median_high": float(med.confidence_interval.high) if med else float(hl[0])})
    return pd.DataFrame(rows)


def verdict(table: pd.DataFrame, rl: str = "toy-rl", controls: tuple[str, ...] = ("toy-base", "toy-sft"),
            control: pd.DataFrame | None = None) -> tuple[str, dict[str, float]]:
    """Apply the decision rule; returns (the sentence for the notebook, the p-values). ``control`` is
    the positive control's summary (one row per model); a model where it is not persistent makes the
    call "no power"."""
    row = table.set_index("model")
    if rl not in row.index or any(c not in row.index for c in controls):
        return "inconclusive: the comparison needs toy-rl, toy-base and toy-sft", {}
    k_rl, n_rl = row.loc[rl, "persistent"], row.loc[rl, "scanned"]
    more, fewer = {}, {}
    for c in controls:
        k, n = row.loc[c, "persistent"], row.loc[c, "scanned"]
        more[c] = fisher_exact([[k_rl, n_rl - k_rl], [k, n - k]], alternative="greater").pvalue
        fewer[c] = fisher_exact([[k_rl, n_rl - k_rl], [k, n - k]], alternative="less").pvalue
    blind = [] if control is None or control.empty else control.model[~control.persistent.astype(bool)].tolist()
    if blind:
        call = "no power"
    elif all(p < 0.05 for p in more.values()):
        call = "support"
    elif any(p < 0.05 for p in fewer.values()):
        call = "contradict"
    else:
        call = "inconclusive"
    parts = [f"{m}: {int(row.loc[m, 'persistent'])}/{int(row.loc[m, 'scanned'])} persistent "
             f"(95% CI {row.loc[m, 'fraction_low']:.2f}-{row.loc[m, 'fraction_high']:.2f}), median half-life "
             f"{row.loc[m, 'median_half_life']:.2f} tokens" for m in row.index]
    p_text = ", ".join(f"p(RL > {c}) = {more[c]:.3g}" for c in controls)
    if call == "no power":
        sentence = (f"At toy scale this scan has no power: the positive control is not found persistent in "
                    f"{', '.join(blind)}, so the counts say nothing about the gremlin hypothesis. ")
    else:
        phrase = {"support": "support", "contradict": "contradict", "inconclusive": "are inconclusive about"}[call]
        sentence = f"At toy scale the data {phrase} the gremlin hypothesis. "
    sentence += "; ".join(parts) + f". {p_text}."
    return sentence, {**{f"p_rl_more_than_{c}": p for c, p in more.items()}, "call": call}


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


def activation_changes(base_subject, tuned_subject, n_docs: int = 40, seed: int = 0) -> pd.DataFrame:
    """Mean relative change of ``blocks.L.hook_resid_post`` over held-out stories' tokens."""
    ids = encode_docs(corpus.generate(n_docs, seed=80_000 + seed), base_subject.tokenizer)
    sites = [f"blocks.{L}.hook_resid_post" for L in range(base_subject.site_map.n_layers)]
    a, b = base_subject.activations_at(ids, sites), tuned_subject.activations_at(ids, sites)
    keep = base_subject.batch(ids).prompt_mask(skip_bos=True)
    return pd.DataFrame([{"layer": int(s.split(".")[1]),
                          "relative_change": float(((b[s] - a[s]).norm(dim=-1)[keep] / a[s].norm(dim=-1)[keep]).mean())}
                         for s in sites])


@dataclass
class GremlinResults:
    scan: pd.DataFrame
    summary: pd.DataFrame
    counts: pd.DataFrame
    verdict: str
    tests: dict
    localisation: pd.DataFrame
    control: pd.DataFrame  # the control topic feature's summary per model (empty without one)


def run(cfg: GremlinConfig, subjects: dict | None = None) -> GremlinResults:
    from gremlinkit import load

    subjects = subjects or {m: load(m, sae=cfg.sae, **cfg.load_kwargs()) for m in cfg.models}
    scan_cfg = cfg.scan_config()
    scan = persistence.run(scan_cfg, subjects)
    summary = persistence.summarize(scan, cfg.n_bootstrap, cfg.seed)
    table = counts(summary)
    base = subjects[cfg.models[0]]
    control = pd.DataFrame()
    if cfg.control_topic:  # the same scan of one feature that must persist: the test's sensitivity
        feature = persistence.topic_feature(base, cfg.control_topic, seed=cfg.seed)
        control_scan = persistence.run(dataclasses.replace(scan_cfg, features=[feature]), subjects)
        control = persistence.summarize(control_scan, cfg.n_bootstrap, cfg.seed)
    sentence, tests = verdict(table, control=control)
    loc = []
    for m in cfg.models[1:]:
        w = weight_changes(base.model._module, subjects[m].model._module, base.site_map.n_layers)
        a = activation_changes(base, subjects[m], seed=cfg.seed)
        loc += [dict(model=m, measure="weights", **r) for r in w.to_dict("records")]
        loc += [dict(model=m, measure="resid_post", part=f"block {r['layer']}", relative_change=r["relative_change"])
                for r in a.to_dict("records")]
    return GremlinResults(scan, summary, table, sentence, tests, pd.DataFrame(loc), control)


def metrics(res: GremlinResults) -> dict[str, float]:
    out = {}
    for r in res.counts.itertuples():
        out[f"{r.model}_persistent"] = r.persistent
        out[f"{r.model}_median_half_life"] = r.median_half_life
    for model, g in res.summary.groupby("model", sort=False):  # the direct effect: non-zero when edits act
        out[f"{model}_mean_abs_effect_lag1"] = float(g.effect_lag1.abs().mean())
    for r in res.control.itertuples():
        out[f"{r.model}_control_half_life"] = r.half_life
        out[f"{r.model}_control_persistent"] = int(r.persistent)
    out.update({k: v for k, v in res.tests.items() if k != "call"})
    call = res.tests.get("call")
    out["verdict_support"] = {"support": 1, "contradict": -1}.get(call, 0)  # 0: inconclusive or no power
    out["verdict_has_power"] = int(call != "no power")
    return out
