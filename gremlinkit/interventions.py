"""Interventions: small frozen dataclasses applied at chosen rows, positions and generation steps.

SAE-feature edits (`ablate`, `add`, `clamp`) go through the SAE and keep its error term::

    f  = sae.encode(x)          f' = f with the edits
    x' = x + sae.decode(f') - sae.decode(f)        (= sae.decode(f') + (x - sae.decode(f)))

so an edit that leaves ``f`` unchanged (ablating an inactive feature, adding 0) leaves ``x``
bit-for-bit unchanged. Residual edits (`steer`, `project_out`, `reflect`) act on the site directly.

Where an intervention applies:

* ``pos``: ``"all"``, an int (negative counts back from the prompt's last token), a slice, or a
  per-row list of lists of positions. Positions are in each prompt's own indexing; in generation,
  the token generated at step ``s`` sits at position ``len(prompt) + s``.
* ``rows``: ``None`` (every row), an int or a list of rows. K interventions on K rows run in one
  batched forward.
* ``step``: ``None`` (every forward of a generation) or the one generation step whose forward it
  edits (step 0 reads the prompt, step ``s`` reads the token generated at step ``s - 1``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch
from torch._subclasses.fake_tensor import DataDependentOutputException

from gremlinkit.errors import InterventionError

Positions = Union[int, slice, str, Sequence[Sequence[int]]]
Rows = Union[int, Sequence[int], None]


@dataclass(frozen=True)
class Intervention:
    pos: Positions = "all"
    rows: Rows = None
    step: int | None = None

    site: str | None = None  # None: the SAE's site
    kind: str = ""


@dataclass(frozen=True)
class FeatureEdit(Intervention):
    feature: int = 0
    value: float = 0.0  # the scale for "add", the target for "clamp"


@dataclass(frozen=True, eq=False)  # holds a tensor: compared by identity
class VectorEdit(Intervention):
    vector: Any = None  # (d,) tensor
    coeff: float = 1.0


def ablate(feature: int, pos: Positions = "all", *, rows: Rows = None, step: int | None = None) -> FeatureEdit:
    """Set SAE feature ``feature`` to zero."""
    return FeatureEdit(pos=pos, rows=rows, step=step, kind="ablate", feature=int(feature))


def add(feature: int, scale: float, pos: Positions = "all", *, rows: Rows = None,
        step: int | None = None) -> FeatureEdit:
    """Add ``scale`` to SAE feature ``feature``."""
    return FeatureEdit(pos=pos, rows=rows, step=step, kind="add", feature=int(feature), value=float(scale))


def clamp(feature: int, value: float, pos: Positions = "all", *, rows: Rows = None,
          step: int | None = None) -> FeatureEdit:
    """Set SAE feature ``feature`` to ``value``."""
    return FeatureEdit(pos=pos, rows=rows, step=step, kind="clamp", feature=int(feature), value=float(value))


def _vector(vector: Any) -> torch.Tensor:
    v = torch.as_tensor(vector, dtype=torch.float32).detach()
    if v.ndim != 1:
        raise InterventionError(f"a direction must be one vector; got shape {tuple(v.shape)}")
    if not torch.isfinite(v).all():
        raise InterventionError(f"the direction has {int((~torch.isfinite(v)).sum())} non-finite entries")
    return v


def steer(vector: Any, coeff: float, site: str, pos: Positions = "all", *, rows: Rows = None,
          step: int | None = None) -> VectorEdit:
    """Add ``coeff * vector`` to the residual at ``site``."""
    if not math.isfinite(float(coeff)):
        raise InterventionError(f"steering coefficient {coeff!r} is not finite")
    return VectorEdit(pos=pos, rows=rows, step=step, site=site, kind="steer", vector=_vector(vector),
                      coeff=float(coeff))


def _unit(vector: Any, kind: str) -> torch.Tensor:
    v = _vector(vector)
    if float(v.norm()) == 0:
        raise InterventionError(f"{kind} needs a non-zero direction")
    return v / v.norm()


def reflect(vector: Any, site: str, pos: Positions = "all", *, rows: Rows = None,
            step: int | None = None) -> VectorEdit:
    """Flip the sign of the component along ``vector`` at ``site`` (x -> x - 2 (x . v) v, v unit)."""
    return VectorEdit(pos=pos, rows=rows, step=step, site=site, kind="reflect", vector=_unit(vector, "reflect"))


def project_out(vector: Any, site: str, pos: Positions = "all", *, rows: Rows = None,
                step: int | None = None) -> VectorEdit:
    """Remove the component along ``vector`` from the activation at ``site``."""
    return VectorEdit(pos=pos, rows=rows, step=step, site=site, kind="project_out",
                      vector=_unit(vector, "project_out"))


# --------------------------------------------------------------------------- planning


def site_of(iv: Intervention, sae_site: str | None) -> str:
    if isinstance(iv, FeatureEdit):
        if sae_site is None:
            raise InterventionError(f"{iv.kind}(feature={iv.feature}) needs an SAE: load the model with sae=")
        if iv.site not in (None, sae_site):
            raise InterventionError(f"feature edits act at the SAE's site {sae_site!r}, not {iv.site!r}")
        return sae_site
    return iv.site


def validate(iv: Intervention, *, n_rows: int, max_len: Sequence[int], d_model: int, d_sae: int) -> None:
    """Check ``iv`` against a batch whose row ``i`` may hold positions ``0 .. max_len[i] - 1``."""
    if isinstance(iv, FeatureEdit) and not 0 <= iv.feature < d_sae:
        raise InterventionError(f"feature {iv.feature} is out of range: this SAE has {d_sae} features "
                                f"(valid 0..{d_sae - 1})")
    if isinstance(iv, VectorEdit) and iv.vector.shape[0] != d_model:
        raise InterventionError(f"the direction has {iv.vector.shape[0]} entries; site {iv.site!r} has width {d_model}")
    rows = _rows(iv.rows, n_rows)
    if isinstance(iv.pos, int):
        for r in rows:
            p = iv.pos if iv.pos >= 0 else max_len[r] + iv.pos
            if not 0 <= p < max_len[r]:
                raise InterventionError(f"position {iv.pos} is beyond row {r}, whose sequence has {max_len[r]} "
                                        f"tokens (valid {-max_len[r]}..{max_len[r] - 1})")
    elif isinstance(iv.pos, str) and iv.pos != "all":
        raise InterventionError(f"pos={iv.pos!r}: use 'all', an int, a slice or a per-row list")
    elif isinstance(iv.pos, (list, tuple)):
        if len(iv.pos) != n_rows:
            raise InterventionError(f"a per-row position list needs {n_rows} entries, one per row; got {len(iv.pos)}")
        for r, ps in enumerate(iv.pos):
            bad = [p for p in ps if not 0 <= p < max_len[r]]
            if bad:
                raise InterventionError(f"positions {bad} are beyond row {r}, whose sequence has {max_len[r]} tokens")


def _rows(rows: Rows, n_rows: int) -> list[int]:
    if rows is None:
        return list(range(n_rows))
    out = [rows] if isinstance(rows, int) else list(rows)
    bad = [r for r in out if not 0 <= r < n_rows]
    if bad:
        raise InterventionError(f"rows {bad} are out of range: the batch has {n_rows} rows (valid 0..{n_rows - 1})")
    return out


def group_by_site(ivs: Sequence[Intervention], sae_site: str | None) -> dict[str, list[Intervention]]:
    groups: dict[str, list[Intervention]] = defaultdict(list)
    for iv in ivs:
        groups[site_of(iv, sae_site)].append(iv)
    return dict(groups)


# --------------------------------------------------------------------------- applying


def mask(iv: Intervention, positions: torch.Tensor, lengths: torch.Tensor, step: int | None) -> torch.Tensor:
    """(B, T) bool: where ``iv`` applies, given each column's prompt position (-1 for padding)."""
    dev = positions.device  # every mask lives where the activations do
    if iv.step is not None and step is not None and iv.step != step:
        return torch.zeros_like(positions, dtype=torch.bool)
    valid = positions >= 0
    if iv.pos == "all":
        m = valid
    elif isinstance(iv.pos, int):
        target = (lengths + iv.pos).reshape(-1, 1) if iv.pos < 0 else iv.pos  # (B, 1) or an int
        m = valid & (positions == target)
    elif isinstance(iv.pos, slice):
        idx = torch.arange(int(positions.max()) + 1, device=dev)[iv.pos]
        m = valid & torch.isin(positions, idx)
    else:
        m = torch.zeros_like(valid)
        for r, ps in enumerate(iv.pos):
            m[r] = valid[r] & torch.isin(positions[r], torch.as_tensor(list(ps), dtype=positions.dtype, device=dev))
    if iv.rows is not None:
        keep = torch.zeros(positions.shape[0], dtype=torch.bool, device=dev)
        keep[_rows(iv.rows, positions.shape[0])] = True
        m = m & keep[:, None]
    return m


def may_touch(iv: Intervention, sizes: Sequence[int], step: int) -> bool:
    """Whether ``iv`` can apply at generation step ``step`` (0: the prompt; then the newest token, at
    position ``size + step - 1`` of each row), decided on the host from the prompts' sizes: an edit
    at a fixed position inside the prompt is done after the prompt, and skipping it later saves a
    mask per edit per step. Position forms other than an int are left to the mask."""
    if iv.step is not None and iv.step != step:
        return False
    if step == 0 or not isinstance(iv.pos, int):
        return True
    rows = _rows(iv.rows, len(sizes))
    return any((sizes[r] + iv.pos if iv.pos < 0 else iv.pos) == sizes[r] + step - 1 for r in rows)


def _edited(where: torch.Tensor) -> tuple:
    """Index of the positions a (B, T) mask selects. An SAE codes each token by itself, so only
    those are coded: a (B, T, d_sae) code of a whole batch costs GBs on a real model. A mask whose
    values cannot be read (a fake or meta tensor) selects every position, with the same result."""
    try:
        return where.nonzero(as_tuple=True)
    except (NotImplementedError, DataDependentOutputException, RuntimeError) as err:
        if not (where.is_meta or "nonzero" in str(err)):
            raise
        return (slice(None), slice(None))


def _touches(m: torch.Tensor) -> bool:
    """Whether a mask selects anything; a mask whose values cannot be read (a fake or symbolic
    tensor) is assumed to, so the edit is applied and stays correct."""
    try:
        return bool(m.any())
    except DataDependentOutputException:
        return True


def sae_dtype(sae: Any) -> torch.dtype:
    return sae.W_enc.dtype


def encode(sae: Any, x: torch.Tensor) -> torch.Tensor:
    """SAE features of ``x``, computed in the SAE's own dtype (a bf16 stream meets an fp32 SAE here)."""
    return sae.encode(x.to(sae_dtype(sae)))


MASSIVE_NORM = 10.0  # a token whose residual norm is this many times the median is a massive activation


def massive(x: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the rows of ``x`` (N, d) whose norm exceeds ``MASSIVE_NORM`` times the median norm.

    Massive activations (Sun et al. 2024, "Massive activations in large language models") are a
    few tokens, often the first of a text, whose residual norm is tens of times the rest (25,000 at
    smollm2-135m's BOS, 5,400 on some first words, against a median of 150). Two of them among 3,600
    tokens hold most of the variance, so an explained variance pooled over every token mostly says
    how well the SAE reconstructs them.
    """
    norms = x.float().norm(dim=-1)
    return norms > MASSIVE_NORM * norms.median() if len(norms) else norms.bool()


def reconstruction_fit(x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, float]:
    """How much of the variance of ``x`` (N, d) its reconstruction ``x_hat`` explains, in float32.

    ``explained_variance`` is pooled over every row, as sae_lens's evals compute it;
    ``explained_variance_typical`` leaves out the massive activations (`massive`), whose count is
    ``massive_tokens``. The typical figure is the one that says whether an SAE reads a text.
    """
    x, x_hat = x.float(), x_hat.float()

    def ev(rows: torch.Tensor | slice) -> float:
        xs = x[rows]
        return float(1 - (x_hat[rows] - xs).pow(2).sum() / (xs - xs.mean(0)).pow(2).sum())

    big = massive(x)
    return {"explained_variance": ev(slice(None)), "explained_variance_typical": ev(~big),  # every row: no copy
            "massive_tokens": int(big.sum())}


# sae_lens normalisations whose decode reads the statistics of the input that encode stored, then
# deletes them: the edit's decoder output is scaled back by the input's own norm (or std and mean).
STATEFUL_NORMS = ("constant_norm_rescale", "layer_norm")


def decode_difference(sae: Any, x: torch.Tensor, f_new: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``sae.decode(f_new) - sae.decode(f)``, in the SAE's own normalisation: where decoding needs
    the statistics of ``x`` (the input ``f`` was encoded from), they are stored again for the second
    decode. Zero, bit for bit, wherever ``f_new`` equals ``f``."""
    new = sae.decode(f_new)
    if getattr(sae.cfg, "normalize_activations", "none") in STATEFUL_NORMS:
        sae.encode(x.to(sae_dtype(sae)))  # the first decode consumed them
    return new - sae.decode(f)


def encode_with_pre(sae: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAE features of ``x`` and their encoder pre-activations, from one ``sae.encode`` call.

    The pre-activation is the value at sae_lens's ``hook_sae_acts_pre``, before the activation
    function or the top-k cut, caught by a forward hook on that hook point. A top-k SAE that
    rescales its codes by the decoder norms applies that scale after the hook; it is applied here
    too, so a pre-activation equals the feature's activation wherever the feature is on. Unlike the
    activation, it moves with every change of the input, however small, which is what a persistence
    readout needs.
    """
    caught = []
    handle = sae.hook_sae_acts_pre.register_forward_hook(lambda _module, _inp, out: caught.append(out))
    try:
        post = encode(sae, x)
    finally:
        handle.remove()
    pre = caught[-1]
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        pre = pre * sae.W_dec.norm(dim=-1)
    return post, pre


def encode_pre(sae: Any, x: torch.Tensor) -> torch.Tensor:
    """Encoder pre-activations of ``x`` (see `encode_with_pre`), in the SAE's dtype."""
    return encode_with_pre(sae, x)[1]


def apply(x: torch.Tensor, ivs: Sequence[Intervention], sae: Any, positions: torch.Tensor,
          lengths: torch.Tensor, step: int | None = None) -> torch.Tensor:
    """Apply every intervention of one site to its activation ``x`` (B, T, d).

    A half-precision stream is edited in float32 and rounded back once, so an edit costs no more
    precision than the stream already has; where no edit applies, ``x`` comes back bit for bit.
    """
    masks = [mask(iv, positions, lengths, step) for iv in ivs]
    live = [(iv, m) for iv, m in zip(ivs, masks) if _touches(m)]  # edits that touch this forward
    if not live:
        return x
    w = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x  # the working copy
    features = [(iv, m) for iv, m in live if isinstance(iv, FeatureEdit)]
    if features:
        f_at = _edited(torch.stack([m for _, m in features]).any(0))
        f = encode(sae, x[f_at])  # (N, d_sae) at the edited positions, in the SAE's dtype
        f_new = f.clone()
        for iv, m in features:
            current = f_new[..., iv.feature]
            edited = {"ablate": torch.zeros_like(current), "add": current + iv.value,
                      "clamp": torch.full_like(current, iv.value)}[iv.kind]
            f_new[..., iv.feature] = torch.where(m[f_at], edited, current)
        # The difference is taken in the SAE's dtype, and is exactly zero where no edit applies.
        delta = torch.zeros_like(w)
        delta[f_at] = decode_difference(sae, x[f_at], f_new, f).to(w.dtype)
        w = w + delta
    for iv, m in live:
        if isinstance(iv, VectorEdit):
            m = m[..., None].to(w.dtype)  # (B, T, 1)
            v = iv.vector.to(device=w.device, dtype=w.dtype)
            if iv.kind == "steer":
                w = w + m * iv.coeff * v
            else:  # project_out removes the component once, reflect twice
                times = 2.0 if iv.kind == "reflect" else 1.0
                w = w - times * m * (w @ v)[..., None] * v
    return w.to(x.dtype)
