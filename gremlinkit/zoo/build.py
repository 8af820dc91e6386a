"""Build the zoo from seeds: corpus -> tokenizer -> toy-base -> toy-base-sae, each with a model card.

Every artefact is written to a temporary directory and renamed into place, so an interrupted
build never leaves a half-written artefact behind, and a rerun with ``only=`` redoes one piece.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from gremlinkit.zoo import corpus as corpus_mod
from gremlinkit.zoo import lm, registry
from gremlinkit.zoo.sae import SAESpec, collect, sae_metrics, train_sae
from gremlinkit.zoo.tokenizer import train_tokenizer


@dataclass(frozen=True)
class BuildSpec:
    train_docs: int = 6000
    heldout_docs: int = 400
    sae_docs: int = 4000
    corpus_seed: int = 0
    heldout_seed: int = 1
    lm: lm.LMSpec = field(default_factory=lm.LMSpec)
    sae: SAESpec = field(default_factory=SAESpec)


FULL = BuildSpec()
QUICK = BuildSpec(train_docs=1500, heldout_docs=200, sae_docs=600, lm=lm.LMSpec(steps=150),
                  sae=SAESpec(training_tokens=300_000))


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
    (directory / registry.CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    lines = [f"# {card['name']}", "", card["description"], ""]
    for section, values in card.items():
        if isinstance(values, dict):
            lines += [f"## {section}", ""] + [f"- **{k}**: {v}" for k, v in values.items()] + [""]
    (directory / "README.md").write_text("\n".join(lines))


def _loss_summary(losses: list[float]) -> dict[str, float]:
    arr = np.asarray(losses)
    tail = arr[-max(1, len(arr) // 10):]
    return {"steps": len(arr), "first": float(arr[0]), "final_mean_last_10pct": float(tail.mean()),
            "min": float(arr.min()),
            "curve_every_50": [round(float(x), 4) for x in arr[::50]]}


def build_base(root: Path, spec: BuildSpec) -> dict:
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


def build_sae(root: Path, spec: BuildSpec) -> dict:
    from gremlinkit.subject import load

    t0 = time.time()
    subject = load(registry.path("toy-base", root), sae=False)
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


BUILDERS = {"toy-base": build_base, "toy-base-sae": build_sae}


def build(root: Path | None = None, only: str | None = None, quick: bool = False) -> dict[str, dict]:
    """Build every artefact (or ``only`` one) under ``root``; returns the model cards."""
    root = root or registry.ARTEFACT_DIR
    names = [only] if only else list(BUILDERS)
    for n in names:
        registry.path(n)  # raises a clear error for an unknown name
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    spec = QUICK if quick else FULL
    cards = {}
    for n in names:
        print(f"building {n} ({'quick' if quick else 'full'}) into {root}", flush=True)
        cards[n] = BUILDERS[n](Path(root), spec)
    return cards


def spec_dict(quick: bool) -> dict:
    return asdict(QUICK if quick else FULL)
