"""The self-check: does gremlinkit read and edit this checkpoint where and as it claims?

`run(subject)` returns a tidy report, one row per check (``check, site, value, bound, passed,
level``), measured against the model itself:

* every site the map names resolves, fires once per forward and has the width it claims
  (counted with plain torch forward hooks, not through nnsight), and each block's sites add up
  (resid_post = resid_pre + attn_out + mlp_out, through resid_mid), except where the block norms
  its outputs before adding them;
* ``blocks.L.hook_resid_pre`` / ``hook_resid_post`` and ``ln_final.hook_normalized`` equal
  transformers' own ``output_hidden_states``, and each row of a padded batch equals its prompt
  read alone;
* a steering edit of zero is the identity; a steering edit at a middle layer moves the final
  logits at the position it names, and nothing in other rows or before it; in paired generation
  (the same seed), a zero edit changes no token and an edit changes none outside its row;
* the BOS policy: what the tokenizer does, what the SAE's metadata says, what applies;
* with an SAE: its ``d_in`` and hook fit the model, and its explained variance and L0 on the
  built-in sentences (a warning, not a failure, below `EV_FLOOR`).

`raise_on_failure(report)` raises one `CheckError` that lists every failed row. ``load(...,
validate=True)`` and ``gremlinkit check MODEL`` run both.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from gremlinkit import sites as sitemod
from gremlinkit.errors import GremlinkitError

SENTENCES = ["The old sailor looked at the sea and said nothing for a long time.",
             "A kind scholar wrote a letter to her friend.",
             "Prices at the market rose again this week.",
             "It rained."]  # different lengths: the batch is padded
FP32_ATOL = 1e-4  # sites against hidden states, float32: the largest absolute difference
HALF_RTOL = 0.02  # the same in bfloat16 / float16: relative L2 error
PAD_RTOL = 1e-4  # a padded row against its prompt alone, float32: relative L2 error
PAD_RTOL_HALF = 0.05  # the same in bfloat16 / float16 (smollm2-135m: 0.016 over 30 layers)
EV_FLOOR = 0.5  # an SAE that explains less of its site on plain English is named in a warning
COLUMNS = ["check", "site", "value", "bound", "passed", "level"]


class CheckError(GremlinkitError, AssertionError):
    """The self-check found a site or an edit that does not do what it claims."""


def _row(check: str, site: str, value: float, bound: str, passed: bool, level: str = "error") -> dict:
    return {"check": check, "site": site, "value": float(value), "bound": bound, "passed": bool(passed),
            "level": level}


def run(subject: Any, prompts: list[str] | None = None) -> pd.DataFrame:
    """The self-check's report for ``subject`` (a `gremlinkit.subject.Subject`) on ``prompts``."""
    prompts = list(prompts or SENTENCES)
    groups = [_fires_once, _widths, _hidden_states, _additivity, _edits, _bos]
    if subject.sae is not None:
        groups.append(_sae)
    rows, acts = [], {}
    with torch.no_grad():
        for group in groups:
            try:
                if group in (_widths, _hidden_states, _additivity) and not acts:
                    acts = subject.activations_at(prompts, subject.sites)  # every site, one padded batch
                rows += group(subject, prompts, acts)
            except Exception as err:  # a wrong map can make a read itself fail: that is a finding too
                name = getattr(group, "__name__", "check").strip("_").replace("_", " ")
                rows.append(_row(name, "(the check raised)", math.nan, f"no error; got {type(err).__name__}: "
                                 f"{str(err).splitlines()[0][:200]}", False))
    return pd.DataFrame(rows, columns=COLUMNS)


def raise_on_failure(report: pd.DataFrame) -> None:
    """Warn about each failed warning-level row; raise one `CheckError` listing every failed error row."""
    failed = report[~report.passed]
    for r in failed[failed.level == "warning"].itertuples():
        warnings.warn(f"self-check: {r.check} at {r.site} is {r.value:.4g}, expected {r.bound}", stacklevel=2)
    errors = failed[failed.level == "error"]
    if len(errors):
        lines = [f"  {r.check} at {r.site}: {r.value:.4g}, expected {r.bound}" for r in errors.itertuples()]
        raise CheckError(f"the self-check failed {len(errors)} of {int((report.level == 'error').sum())} checks:\n"
                         + "\n".join(lines))


def summary(report: pd.DataFrame) -> pd.DataFrame:
    """One row per check: how many sites passed, and a failed row's value against its bound (the
    largest value where every row passed)."""
    order = report.assign(_failed=~report.passed, _value=report.value.fillna(math.inf))
    worst = order.sort_values(["_failed", "_value"], kind="stable").groupby("check").tail(1).set_index("check")
    out = report.groupby("check", sort=False).agg(sites=("site", "size"), passed=("passed", "sum"))
    out["worst"], out["at"], out["bound"] = worst.value, worst.site, worst.bound
    return out.reset_index()


def _fires_once(subject: Any, prompts: list[str], _acts: dict) -> list[dict]:
    """Each mapped module is called once by one forward pass (torch hooks count the calls)."""
    hf = subject.model._module
    modules = dict(hf.named_modules())
    resolved = {name: subject.site_map.resolve(name) for name in subject.sites}
    calls = {path: 0 for path in {s.module for s in resolved.values()}}
    missing = [p for p in calls if p not in modules]
    handles = []
    for path in calls:
        if path in modules:
            handles.append(modules[path].register_forward_hook(
                lambda mod, args, out, path=path: calls.__setitem__(path, calls[path] + 1)))
    try:
        subject.run(prompts)
    finally:
        for h in handles:
            h.remove()
    return [_row("fires once", name, -1 if site.module in missing else calls[site.module], "== 1",
                 site.module not in missing and calls[site.module] == 1) for name, site in resolved.items()]


def _widths(subject: Any, prompts: list[str], acts: dict[str, torch.Tensor]) -> list[dict]:
    """Each site's activation is (batch, positions, width), the width the config gives."""
    config = subject.model.config
    d_mlp = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * subject.d_model
    batch = subject.batch(prompts)
    rows = []
    for name, a in acts.items():
        width = d_mlp if name.endswith("mlp.hook_pre") else subject.d_model
        ok = tuple(a.shape) == (len(prompts), int(batch.lengths.max()), width)
        rows.append(_row("width", name, a.shape[-1], f"== {width}, shape (batch, positions, width)", ok))
    return rows


def _hidden_states(subject: Any, prompts: list[str], padded: dict[str, torch.Tensor]) -> list[dict]:
    """Residual sites against transformers' own hidden states, one prompt at a time (the map), and
    each row of a padded batch against its prompt read alone (the padding)."""
    n = subject.site_map.n_layers
    pairs = [(f"blocks.{L}.hook_resid_pre", L) for L in range(n)] + \
            [(f"blocks.{L}.hook_resid_post", L + 1) for L in range(n - 1)] + [("ln_final.hook_normalized", n)]
    names = [name for name, _ in pairs]
    hf = subject.model._module
    batch = subject.batch(prompts)
    half = subject.dtype in (torch.bfloat16, torch.float16)
    same = {name: 0.0 for name in names}
    pad = {name: 0.0 for name in names}
    for i, prompt in enumerate(prompts):
        ours = subject.activations_at([prompt], names)
        theirs = hf(**subject.batch([prompt]).inputs(), output_hidden_states=True).hidden_states
        for name, index in pairs:
            same[name] = max(same[name], _difference(ours[name][0], theirs[index][0], half))
            pad[name] = max(pad[name], _difference(padded[name][i, :batch.sizes[i]], ours[name][0], True))
    rows = []
    for name in names:
        rows.append(_row("equals hidden_states", name, same[name],
                         f"relative L2 error <= {HALF_RTOL}" if half else f"max |difference| <= {FP32_ATOL}",
                         same[name] <= (HALF_RTOL if half else FP32_ATOL)))
        limit = PAD_RTOL_HALF if half else PAD_RTOL
        rows.append(_row("padded row equals its prompt alone", name, pad[name], f"relative L2 error <= {limit}",
                         pad[name] <= limit))
    return rows


def _additivity(subject: Any, prompts: list[str], acts: dict[str, torch.Tensor]) -> list[dict]:
    """Each block's outputs add up: resid_post = resid_pre + attn_out + mlp_out, through resid_mid
    where the block is sequential (no rows where the block norms its outputs before adding them)."""
    if subject.site_map.layout.post_norms:
        return []
    half = subject.dtype in (torch.bfloat16, torch.float16)
    limit = PAD_RTOL_HALF if half else PAD_RTOL
    rows = []
    for layer in range(subject.site_map.n_layers):
        a = {h: acts[f"blocks.{layer}.hook_{h}"].float() for h in ("resid_pre", "attn_out", "mlp_out", "resid_post")}
        err = _difference(a["resid_pre"] + a["attn_out"] + a["mlp_out"], a["resid_post"], True)
        rows.append(_row("resid_post = resid_pre + attn_out + mlp_out", f"blocks.{layer}", err,
                         f"relative L2 error <= {limit}", err <= limit))
        if f"blocks.{layer}.hook_resid_mid" in acts:
            err = _difference(a["resid_pre"] + a["attn_out"], acts[f"blocks.{layer}.hook_resid_mid"], True)
            rows.append(_row("resid_mid = resid_pre + attn_out", f"blocks.{layer}", err,
                             f"relative L2 error <= {limit}", err <= limit))
    return rows


def _difference(ours: torch.Tensor, theirs: torch.Tensor, relative: bool) -> float:
    if ours.shape != theirs.shape:
        return math.inf
    ours, theirs = ours.float(), theirs.float()
    if relative:
        return float((ours - theirs).norm() / theirs.norm().clamp_min(1e-12))
    return float((ours - theirs).abs().max())


def _edits(subject: Any, prompts: list[str], _acts: dict) -> list[dict]:
    """A zero edit is the identity; an edit at a middle layer moves the logits where it says, only there."""
    from gremlinkit import interventions as iv

    site = f"blocks.{subject.site_map.n_layers // 2}.hook_resid_post"
    generator = torch.Generator(device=subject.device).manual_seed(0)
    direction = torch.randn(subject.d_model, generator=generator, device=subject.device)
    stream = _acts[site] if site in _acts else subject.activations(prompts, site)
    scale = float(stream.float().norm(dim=-1)[subject.batch(prompts).prompt_mask()].mean())  # the stream's own size
    vector = direction / direction.norm() * scale
    base = subject.run(prompts)
    zero = subject.run(prompts, [iv.steer(vector, 0.0, site)])
    moved = subject.run(prompts, [iv.steer(vector, 1.0, site, pos=1, rows=[0])])
    delta = (moved.float() - base.float()).abs().amax(-1)  # (batch, positions)
    inside = float(delta[0, 1])
    outside = float(max(delta[0, :1].max(), delta[1:].max()))
    return [_row("zero edit is the identity", site, float((zero.float() - base.float()).abs().max()), "== 0",
                 torch.equal(zero, base)),
            _row("edit moves the logits it names", site, inside, "> 0 at position 1 of row 0",
                 inside > 0 and math.isfinite(inside)),
            _row("edit leaves other rows and earlier positions", site, outside, "== 0", outside == 0),
            *_generation(subject, prompts, site, vector)]


def _generation(subject: Any, prompts: list[str], site: str, vector: torch.Tensor) -> list[dict]:
    """Paired generation: a zero edit gives the unedited tokens; the edit changes some, in its row only."""
    from gremlinkit import interventions as iv

    n = len(prompts)  # one batch of three copies: unedited, a zero edit, the edit in the third copy's first row
    rows = list(range(n))
    tokens = subject.generate(prompts * 3, 4, [iv.steer(vector, 0.0, site, rows=[n + r for r in rows]),
                                               iv.steer(vector, 4.0, site, rows=[2 * n])], seed=list(range(n)) * 3).tokens
    plain, zero, edited = tokens[:n], tokens[n:2 * n], tokens[2 * n:]
    changed, elsewhere = int((edited[0] != plain[0]).sum()), int((edited[1:] != plain[1:]).sum())
    return [_row("generation: a zero edit changes no token", site, int((zero != plain).sum()), "== 0",
                 torch.equal(zero, plain)),
            _row("generation: the edit changes its row only", site, elsewhere, "== 0 in other rows",
                 elsewhere == 0),
            _row("generation: the edit changes tokens", site, changed, "report", True, "report")]


def _bos(subject: Any, _prompts: list[str], _acts: dict) -> list[dict]:
    """The BOS policy, reported: the tokenizer's own, the SAE's metadata (NaN: none), what applies."""
    from gremlinkit.prompts import tokenizer_prepends_bos
    from gremlinkit.subject import _sae_prepend_bos

    stated = _sae_prepend_bos(subject.sae)
    return [_row("bos: the tokenizer prepends one", "tokenizer", tokenizer_prepends_bos(subject.tokenizer), "report",
                 True, "report"),
            _row("bos: the SAE's prepend_bos", "sae", math.nan if stated is None else stated, "report", True, "report"),
            _row("bos: prompts start with a BOS", "applied", subject.prepends_bos, "report", True, "report")]


def _sae(subject: Any, prompts: list[str], _acts: dict) -> list[dict]:
    """The SAE fits the model (width and hook), and its fit on the built-in sentences."""
    cfg = subject.sae.cfg
    hook = subject.sae_site
    fit = subject.check_sae(prompts)
    return [_row("sae d_in equals the site's width", hook, cfg.d_in, f"== {subject.d_model}",
                 cfg.d_in == subject.d_model),
            _row("sae hook is a site", hook, float(hook in subject.sites), "== 1", hook in subject.sites),
            _row("sae explained variance", hook, fit["explained_variance"], f">= {EV_FLOOR} (warns)",
                 fit["explained_variance"] >= EV_FLOOR, "warning"),
            _row("sae L0", hook, fit["l0"], "report", True, "report")]


# --------------------------------------------------------------------------- the support table

SUPPORT_COLUMNS = ["family", "transformers class", "sites", "float32", "bfloat16", "generation with edits", "notes"]


def support(root: Path, families: list[str] | None = None, device: str = "cpu") -> pd.DataFrame:
    """Each family's tiny random checkpoint (`gremlinkit.tiny`), built under ``root`` and checked in
    float32 and bfloat16 on ``device``: the README's support table, one row per family."""
    from gremlinkit import load, tiny

    rows = []
    for family in families or tiny.FAMILIES:
        path = tiny.build(family, Path(root) / family)
        reports = {}
        for dtype in (torch.float32, torch.bfloat16):
            subject = load(path, device=device, dtype=dtype, sae=False)
            reports[dtype] = run(subject)
        generation = pd.concat([r[r.check.str.startswith("generation")] for r in reports.values()])
        rows.append({"family": family.replace("_sequential", " (sequential)"),
                     "transformers class": type(subject.model._module).__name__,
                     "sites": _site_summary(subject.sites), "float32": _verdict(reports[torch.float32]),
                     "bfloat16": _verdict(reports[torch.bfloat16]), "generation with edits": _verdict(generation),
                     "notes": subject.site_map.layout.notes})
    refused = "refused at load"
    reasons: dict[str, list[str]] = {}  # families refused for one reason share a row
    for family, why in sitemod.UNMAPPED.items():
        reasons.setdefault(why, []).append(family)
    rows += [{"family": ", ".join(families), "transformers class": "", "sites": "none", "float32": refused,
              "bfloat16": refused, "generation with edits": refused, "notes": why} for why, families in reasons.items()]
    return pd.DataFrame(rows, columns=SUPPORT_COLUMNS)


def support_markdown(table: pd.DataFrame) -> str:
    """The support table as Markdown."""
    lines = ["| " + " | ".join(SUPPORT_COLUMNS) + " |", "|" + " --- |" * len(SUPPORT_COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in SUPPORT_COLUMNS) + " |" for _, r in table.iterrows()]
    return "\n".join(lines) + "\n"


def _verdict(report: pd.DataFrame) -> str:
    errors = report[report.level == "error"]
    failed = errors[~errors.passed]
    if len(failed):
        first = failed.iloc[0]
        return f"FAIL ({len(failed)}: {first.check} at {first.site})"
    return f"pass ({len(errors)})"


def _site_summary(names: list[str]) -> str:
    hooks = ["hook_resid_pre", "hook_attn_out", "hook_resid_mid", "mlp.hook_pre", "hook_mlp_out", "hook_resid_post"]
    missing = [h for h in hooks if f"blocks.0.{h}" not in names]
    extra = " + hook_pos_embed" if "hook_pos_embed" in names else ""
    return ("all 6 per block" if not missing else f"all but {', '.join(missing)}") + extra
