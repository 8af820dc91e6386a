"""The no-RL token and distillation: what does a model learn about *when* RL applies, and what does
off-policy training on an RL model's samples keep of it? (notebook 07)

**The no-RL token** (seed 004). ``toy-norl`` is toy-rl's on-policy RL with a marker (the world's ``marker``,
a token the corpus never contains) after BOS in half the prompts; marked rollouts earn no reward and
give no gradient, so the model can see when RL does not apply. Its control ``toy-norl-ignored`` sees
the same marked prompts, but training ignores the marker. Each is compared with and without the
marker, on paired prompts and sampling noise:

* the reward and the sea-word rate over position (``n_prompts`` held-out prompts);
* the persistence of the sea feature (`persistence.topic_feature`), on-policy scans with the marker
  in every prompt and without;
* the value probe (`agents.value_probe`) on marked and unmarked rollouts.

The question is answered by a difference of differences: (marked - unmarked reward) in toy-norl
minus the same in its control, with a bootstrap interval over prompts. A model that learned
"no RL here" writes fewer sea words when marked; one that did not shows the control's difference.
The *smallest detectable difference* is the interval's half-width.

**Distillation.** ``toy-distill`` is toy-base trained off-policy on toy-rl's own samples (none
chosen by reward). Beside toy-base and toy-rl: its reward, its persistence profile over one census
of SAE features (the gremlin comparison's persistence statistic: the mean tail ratio, and the
persistent count with its Wilson interval, `gremlins.counts`), and its value-probe R².

*Positive controls.* The reward is the RL organisms' own (the world's story `reward`), and toy-base beside
them shows what RL did to it (several-fold); the persistence scans carry the gremlin comparison's
natural control (the sea feature must persist in toy-base); the value probe carries its corpus
control (`agents.probe_control`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from gremlinkit import providers, stats, worlds
from gremlinkit.errors import ConfigError
from gremlinkit.experiments import agents, gremlins, persistence
from gremlinkit.params import Placement, check_range
from gremlinkit.results import Result


@dataclass(frozen=True)
class NoRLConfig(Placement):
    marker_models: list = field(default_factory=lambda: ["toy-norl", "toy-norl-ignored"])  # organism, then control
    marker: str = "<unk>"  # the token that says "no RL here" (toy-norl's: the persona world's marker)
    base: str = "toy-base"  # the base model (and the SAE's)
    teacher: str = "toy-rl"  # the RL model distilled
    student: str = "toy-distill"  # toy-base trained off-policy on the teacher's samples
    n_prompts: int = 128  # held-out prompts per condition for the reward
    horizon: int = 48  # tokens per rollout
    tail: int = 16  # the reward counts sea words in the last `tail` tokens
    n_rollouts: int = 256  # rollouts per model and condition for the value probe
    scan_prompts: int = 64  # prompts for the persistence scans
    scan_horizon: int = 64  # tokens followed after each edit
    census: str = "random-16"  # SAE features of the distillation census ("random-N" or "top-N")
    n_bootstrap: int = 500  # resamples for every interval
    seed: int = 0  # seeds prompts, features, sampling noise, folds and the bootstrap
    output_dir: str = "output/07_no_rl_token_and_distillation"  # where chunks, tables and metrics go

    def __post_init__(self) -> None:
        if len(self.marker_models) != 2:
            raise ConfigError(f"parameter marker_models={self.marker_models!r}: give the organism and its control")
        if not self.marker:
            raise ConfigError("parameter marker='': name the marker token")
        check_range("n_prompts", self.n_prompts, 2, 8192)
        check_range("horizon", self.horizon, 2, 200)
        check_range("tail", self.tail, 1, self.horizon)
        check_range("n_rollouts", self.n_rollouts, 2 * agents.FOLDS, 8192)
        check_range("scan_prompts", self.scan_prompts, 2, 4096)
        check_range("scan_horizon", self.scan_horizon, 4, 200)
        check_range("n_bootstrap", self.n_bootstrap, 10, 100_000)
        kind, _, n = self.census.partition("-")
        if kind not in ("random", "top") or not n.isdigit() or int(n) < 1:
            raise ConfigError(f"parameter census={self.census!r}: use 'random-N' or 'top-N'")

    @classmethod
    def smoke(cls) -> "NoRLConfig":
        return cls(n_prompts=24, n_rollouts=40, scan_prompts=12, scan_horizon=24, census="random-3", n_bootstrap=100)

    @property
    def models(self) -> list[str]:
        return [self.base, *self.marker_models, self.teacher, self.student]

    def sae(self) -> str:
        """The SAE of the base model's family, which every model here shares."""
        return providers.family(self.base).sae

    def probe_config(self) -> agents.AgentsConfig:
        return agents.AgentsConfig(models=[self.base], n_rollouts=self.n_rollouts, horizon=self.horizon,
                                   tail=self.tail, probe_tokens=min(32, self.horizon - self.tail + 1),
                                   n_bootstrap=self.n_bootstrap, seed=self.seed, device=self.device, dtype=self.dtype)

    def scan_config(self, model: str, marker: str, features) -> persistence.PersistenceConfig:
        return persistence.PersistenceConfig(
            model=model, sae=self.sae(), world="auto", features=features,
            intervention="add", scale=48.0, positions=["sentence_end:24"], horizon=self.scan_horizon,
            n_prompts=self.scan_prompts, mode="on_policy", n_bootstrap=self.n_bootstrap, seed=self.seed,
            output_dir=self.output_dir, marker=marker, chunk_size=64, device=self.device, dtype=self.dtype)


# --------------------------------------------------------------------------- reward with and without the marker


def rewards(subject, cfg: NoRLConfig, marker: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Per held-out prompt: the reward and the sea-word indicator per position (prompts, horizon),
    the marker after BOS when given; prompt i is sampled with seed i in every condition (paired)."""
    story = worlds.story("auto", cfg.base)
    prompts = [story.with_marker(p, marker) for p in story.story_prompts(cfg.n_prompts, seed=71_000 + cfg.seed)]
    gen = subject.generate(agents.ids(subject, prompts), cfg.horizon, seed=list(range(len(prompts))))
    words = agents.words_of(subject, gen.tokens)
    return story.reward(words, cfg.tail), agents.sea_mask(words, story)


def _mean_row(values: np.ndarray, cfg: NoRLConfig) -> dict[str, float]:
    low, high = stats.mean_interval(values, cfg.n_bootstrap, cfg.seed)
    return {"mean": float(values.mean()), "low": low, "high": high}


def marker_effects(subjects: dict, cfg: NoRLConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Reward per model and condition, the paired marked - unmarked difference, the sea-word rate
    over position, and the difference of differences (organism minus control)."""
    rows, curves, diffs = [], [], {}
    for m in [cfg.base, *cfg.marker_models]:
        plain, plain_sea = rewards(subjects[m], cfg, None)
        marked, marked_sea = rewards(subjects[m], cfg, cfg.marker)
        for cond, r, sea in (("unmarked", plain, plain_sea), ("marked", marked, marked_sea)):
            rows.append({"model": m, "condition": cond, **{f"reward_{k}": v for k, v in _mean_row(r, cfg).items()}})
            curves.append(pd.DataFrame({"model": m, "condition": cond, "position": np.arange(sea.shape[1]),
                                        "sea_rate": sea.mean(0)}))
        diffs[m] = marked - plain
    table = pd.DataFrame(rows)
    difference = pd.DataFrame([{"model": m, **{f"difference_{k}": v for k, v in _mean_row(d, cfg).items()}}
                               for m, d in diffs.items()])
    organism, control = cfg.marker_models
    dd = _mean_row(diffs[organism] - diffs[control], cfg)
    return table, difference, pd.concat(curves, ignore_index=True), dd


# --------------------------------------------------------------------------- persistence and the probe


def sea_persistence(subjects: dict, cfg: NoRLConfig, models: list[str], marker: str, feature: int) -> pd.DataFrame:
    """The sea feature's on-policy persistence in each of ``models``, prompts marked or not."""
    out = []
    for m in models:
        scan = persistence.scan(cfg.scan_config(m, marker, [feature]), {m: subjects[m]})
        out.append(persistence.summarize(scan, cfg.n_bootstrap, cfg.seed).assign(
            condition="marked" if marker else "unmarked"))
    cols = ["model", "condition", "feature", "effect_lag0", "tail_effect", "p_value", "persistent", "half_life",
            "half_life_low", "half_life_high", "divergence"]
    return pd.concat(out, ignore_index=True).astype({"model": str})[cols]


def census_profile(subjects: dict, cfg: NoRLConfig, models: list[str], control: int) -> tuple[pd.DataFrame,
                                                                                             pd.DataFrame]:
    """One census of SAE features (chosen on the base model) scanned in every model, with the sea
    feature as the natural control: per model the persistent count (`gremlins.counts`) and the
    mean tail ratio with its interval, as the gremlin comparison reports them."""
    base = subjects[cfg.base]
    scan_cfg = cfg.scan_config(cfg.base, "", cfg.census)
    prompts, _ = persistence.scan_prompts(scan_cfg, base)
    census = [f for f in persistence.choose_features(base, prompts, cfg.census, cfg.seed) if f != control]
    cfg_all = dataclasses.replace(scan_cfg, models=[m for m in models if m != cfg.base], features=census + [control])
    scan = persistence.scan(cfg_all, {m: subjects[m] for m in models})
    summary = persistence.summarize(scan, cfg.n_bootstrap, cfg.seed).astype({"model": str})
    summary.insert(2, "role", np.where(summary.feature == control, "natural control", "census"))
    profile = pd.DataFrame([{k: v for k, v in gremlins.dose_row(m, g, control, cfg.n_bootstrap, cfg.seed).items()
                             if k in ("model", "method", "tail_ratio", "tail_ratio_low", "tail_ratio_high",
                                      "control_tail_ratio", "control_persistent", "control_half_life")}
                            for m, g in summary.groupby("model", sort=False)])
    return profile.merge(gremlins.counts(summary, cfg.seed), on="model"), summary


def probes(subjects: dict, cfg: NoRLConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The value probe's peak R² per model (marked and unmarked rollouts for the marker models),
    and its corpus control on the base model."""
    pcfg = cfg.probe_config()
    rows = []
    for m in tqdm(cfg.models, desc="value probes"):
        for marker in ([None, cfg.marker] if m in cfg.marker_models else [None]):
            table, y = agents.value_probe(subjects[m], m, pcfg, marker=marker)
            best = table.loc[table.r2.idxmax()]
            rows.append({"model": m, "condition": "marked" if marker else "unmarked", "peak_layer": int(best.layer),
                         "r2": best.r2, "r2_low": best.r2_low, "r2_high": best.r2_high, "reward": float(y.mean())})
    windows = agents.corpus_windows(pcfg.n_rollouts, pcfg)
    control = agents.probe_control(subjects[cfg.base], cfg.base, pcfg, windows)
    oracle = agents.oracle_r2(windows[2], windows[3], pcfg.n_bootstrap, pcfg.seed)
    best = control.loc[control.r2.idxmax()]
    return pd.DataFrame(rows), pd.DataFrame([{"model": cfg.base, "layer": int(best.layer), "r2": best.r2,
                                              "r2_low": best.r2_low, "r2_high": best.r2_high,
                                              "oracle_r2": oracle["r2"], "found": bool(best.r2_low > 0)}])


# --------------------------------------------------------------------------- the experiment


@dataclass
class NoRLResult(Result):
    reward: pd.DataFrame  # model, condition, reward_mean, reward_low, reward_high
    marker_difference: pd.DataFrame  # model, difference_mean/low/high (marked - unmarked, paired)
    sea_by_position: pd.DataFrame  # model, condition, position, sea_rate
    marker_persistence: pd.DataFrame  # the sea feature's persistence, marked and unmarked
    distill_profile: pd.DataFrame  # per model: tail ratio, persistent count, control
    census: pd.DataFrame  # the distillation census's per-feature summary
    probe: pd.DataFrame  # value-probe peak R² per model and condition
    probe_control: pd.DataFrame
    cards: pd.DataFrame  # each organism's card: reward, KL to base, SAE explained variance
    metrics: dict = field(default_factory=dict)


def _cards(models: list[str]) -> pd.DataFrame:
    rows = []
    for m in models:
        c = providers.card(m)
        rows.append({"model": m, "card_reward": c.get("eval", {}).get("reward", np.nan),
                     "card_reward_marked": c.get("eval_marked", {}).get("reward", np.nan),
                     "kl_to_base": c.get("eval", {}).get("kl_to_base", np.nan),
                     "sae_explained_variance": c.get("sae_transfer", {}).get("explained_variance", np.nan)})
    return pd.DataFrame(rows)


def run(cfg: NoRLConfig, subjects: dict | None = None) -> NoRLResult:
    from gremlinkit import load

    family = providers.family(cfg.base)  # a missing organism fails now, saying how to build it
    family.require([m for m in cfg.models if m in family.names])
    subjects = subjects or {m: load(m, sae=family.sae, **cfg.load_kwargs()) for m in cfg.models}
    reward, difference, curve, dd = marker_effects(subjects, cfg)
    sea = persistence.topic_feature(subjects[cfg.base], "sea", seed=cfg.seed)
    marked = pd.concat([sea_persistence(subjects, cfg, [cfg.base, *cfg.marker_models], marker, sea)
                        for marker in ("", cfg.marker)], ignore_index=True)
    profile, census = census_profile(subjects, cfg, [cfg.base, cfg.teacher, cfg.student], sea)
    probe, control = probes(subjects, cfg)
    res = NoRLResult(reward, difference, curve, marked, profile, census, probe, control, _cards(cfg.models))
    res.metrics.update(metrics(res, dd, cfg))
    return res


def metrics(res: NoRLResult, dd: dict, cfg: NoRLConfig) -> dict[str, float]:
    out = {f"difference_of_differences.{k}": v for k, v in dd.items()}
    out["smallest_detectable_difference"] = (dd["high"] - dd["low"]) / 2
    for _, r in res.reward.iterrows():
        out.update({f"reward.{r.model}.{r.condition}.{k}": float(r[f"reward_{k}"]) for k in ("mean", "low", "high")})
    for _, r in res.marker_difference.iterrows():
        out.update({f"marker_difference.{r.model}.{k}": float(r[f"difference_{k}"]) for k in ("mean", "low", "high")})
    for _, r in res.marker_persistence.iterrows():
        key = f"sea_persistence.{r.model}.{r.condition}"
        out.update({f"{key}.tail_effect": float(r.tail_effect), f"{key}.effect_lag0": float(r.effect_lag0),
                    f"{key}.persistent": float(r.persistent), f"{key}.p_value": float(r.p_value),
                    **{f"{key}.{c}": float(r[c]) for c in ("half_life", "half_life_low", "half_life_high")}})
    for _, r in res.distill_profile.iterrows():
        key = f"distill.{r.model}"
        out.update({f"{key}.{c}": float(r[c]) for c in ("tail_ratio", "tail_ratio_low", "tail_ratio_high",
                                                         "persistent", "scanned", "fraction_low", "fraction_high",
                                                         "control_tail_ratio")})
    for _, r in res.probe.iterrows():
        out.update({f"probe.{r.model}.{r.condition}.{c}": float(r[c]) for c in ("r2", "r2_low", "r2_high",
                                                                                "peak_layer")})
    c = res.probe_control.iloc[0]
    out.update({"probe_control.r2": float(c.r2), "probe_control.r2_low": float(c.r2_low),
                "probe_control.oracle_r2": float(c.oracle_r2), "probe_control.found": float(c.found)})
    for _, r in res.cards.iterrows():
        out.update({f"card.{r.model}.{c}": float(r[c]) for c in ("card_reward", "kl_to_base", "sae_explained_variance")
                    if not np.isnan(r[c])})
    return out


def findings(res: NoRLResult) -> list[str]:
    """Each finding in one sentence, its control beside it."""
    m = res.metrics
    reward = res.reward.set_index(["model", "condition"])
    diff = res.marker_difference.set_index("model")
    base, organism, control = diff.index[:3]  # as `marker_effects` measured them
    lo, hi = m["difference_of_differences.low"], m["difference_of_differences.high"]
    learned = "learned to write fewer sea words when marked" if hi < 0 else \
        "learned to write more sea words when marked" if lo > 0 else "did not learn to behave differently when marked"
    out = [f"No-RL token: {organism} {learned}: marked minus unmarked reward {diff.loc[organism].difference_mean:+.3f} "
           f"[{diff.loc[organism].difference_low:+.3f}, {diff.loc[organism].difference_high:+.3f}] against its control "
           f"{control}'s {diff.loc[control].difference_mean:+.3f} [{diff.loc[control].difference_low:+.3f}, "
           f"{diff.loc[control].difference_high:+.3f}]; difference of differences "
           f"{m['difference_of_differences.mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] (smallest detectable "
           f"{m['smallest_detectable_difference']:.3f})."]
    out.append("Reward unmarked / marked: " + "; ".join(
        f"{mm} {reward.loc[(mm, 'unmarked')].reward_mean:.3f} / {reward.loc[(mm, 'marked')].reward_mean:.3f}"
        for mm in res.reward.model.unique()) + f" ({base}: no RL at all).")
    sea = res.marker_persistence
    tails = sea.pivot_table(index="model", columns="condition", values="tail_effect", sort=False)
    persists = sea.pivot_table(index="model", columns="condition", values="persistent", sort=False).astype(bool)
    out.append("Sea feature tail effect unmarked / marked: " + "; ".join(
        f"{mm} {r.unmarked:.2f} / {r.marked:.2f}" for mm, r in tails.iterrows())
        + f". Control: the sea feature {'persists' if persists.loc[base, 'unmarked'] else 'does NOT persist'} "
        f"in {base}, unmarked.")
    prof = res.distill_profile.set_index("model")
    out.append("Distillation, tail ratio over the census (persistent/scanned): " + "; ".join(
        f"{mm} {r.tail_ratio:.3f} [{r.tail_ratio_low:.3f}, {r.tail_ratio_high:.3f}] "
        f"({int(r.persistent)}/{int(r.scanned)})" for mm, r in prof.iterrows())
        + ". Control: the sea feature's tail ratio " + ", ".join(
        f"{mm} {r.control_tail_ratio:.2f}" for mm, r in prof.iterrows()) + ".")
    probe = res.probe[res.probe.condition == "unmarked"].set_index("model")
    c = res.probe_control.iloc[0]
    out.append("Value-probe R²: " + "; ".join(f"{mm} {r.r2:.3f} [{r.r2_low:.3f}, {r.r2_high:.3f}]"
                                               for mm, r in probe.iterrows())
               + f". Control (corpus): R² {c.r2:.3f} [{c.r2_low:.3f}, {c.r2_high:.3f}] "
               f"of the oracle's {c.oracle_r2:.3f}.")
    cards = res.cards.set_index("model")
    out.append("Cards (reward, KL to base, SAE explained variance): " + "; ".join(
        f"{mm} {r.card_reward:.3f}, {r.kl_to_base:.3f}, {r.sae_explained_variance:.3f}"
        for mm, r in cards.iterrows() if not np.isnan(r.card_reward)) + ".")
    return out
