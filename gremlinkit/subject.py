"""`Subject`: a language model under study, wrapped in nnsight, with an optional sae_lens SAE."""

from __future__ import annotations

import contextlib
import copy
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from gremlinkit import cpu_half
from gremlinkit import interventions as ivmod
from gremlinkit import sites as sitemod
from gremlinkit.errors import HubError, InputError, SiteError
from gremlinkit.generation import Generation, GumbelMax, SeededGumbel
from gremlinkit.interventions import Intervention
from gremlinkit.prompts import Batch, Prompts, make_batch, resolve_bos


FEATURE_RECORDS = ("features", "features_pre")  # what `Subject.generate` can record besides sites


class Subject:
    """A model (``.model``, an nnsight ``TransformersModel``), its ``.tokenizer`` and its ``.sae``.

    ``device`` and ``dtype`` are the model's; every tensor the subject makes is put on ``device``.
    ``prepends_bos`` is the BOS policy (see `gremlinkit.prompts.resolve_bos`): ``bos=None`` follows
    the SAE's ``prepend_bos`` metadata, else the tokenizer.
    """

    def __init__(self, model: Any, sae: Any = None, name: str = "", remote: bool = False,
                 bos: bool | None = None):
        self.model = model
        self.tokenizer = model.tokenizer
        self.name = name
        self.remote = remote
        self.site_map = sitemod.SiteMap.for_config(model.config)
        self.prepends_bos = resolve_bos(self.tokenizer, bos, _sae_prepend_bos(sae))
        self.sae = None
        self._sae_site: str | None = None
        self._sae_context: int | None = None  # the SAE's training context (its metadata's context_size)
        self._warned_context = False
        self.float32_matmuls = False  # half-precision matmuls run in float32 (`load`'s choice on a CPU)
        if sae is not None:
            self._attach(sae, None, warn_bos=False)  # resolve_bos has already named any conflict

    @property
    def device(self) -> torch.device:
        return torch.device(self.model.device)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    # ----------------------------------------------------------------- sites and the SAE
    @property
    def sites(self) -> list[str]:
        return self.site_map.names

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def n_ctx(self) -> int | None:
        cfg = self.model.config
        return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)

    @property
    def sae_site(self) -> str:
        if self.sae is None:
            raise SiteError("this subject has no SAE attached: pass sae= to gremlinkit.load")
        return self._sae_site

    def attach_sae(self, sae: Any, site: str | None = None) -> None:
        """Attach ``sae`` at ``site`` (default: the hook name in its metadata), checking it fits.

        An SAE on another device is copied to the subject's (the caller's object is never changed)
        and keeps its own dtype; its metadata is left as it is.
        """
        self._attach(sae, site, warn_bos=True)

    def _attach(self, sae: Any, site: str | None, warn_bos: bool) -> None:
        hook = site or _sae_hook(sae, self.site_map)
        if hook is None:
            raise SiteError("the SAE's metadata names no hook_name or hf_hook_name; pass site= explicitly")
        if site is not None and sae.cfg.metadata.hook_name not in (None, site):
            raise SiteError(f"this SAE was trained for site {sae.cfg.metadata.hook_name!r}, not {site!r}")
        self.site_map.resolve(hook)  # raises for an unknown site
        if sae.cfg.d_in != self.d_model:
            raise SiteError(f"SAE d_in={sae.cfg.d_in} does not match site {hook!r}, whose width is {self.d_model}")
        prepend = _sae_prepend_bos(sae)
        if warn_bos and prepend is not None and prepend != self.prepends_bos:
            warnings.warn(f"this subject has prepends_bos={self.prepends_bos}, but the SAE was trained with "
                          f"prepend_bos={prepend}: load with bos={prepend} to match it", stacklevel=2)
        context = _sae_context_size(sae)
        unapplied = _sae_unapplied_kwargs(sae)
        if unapplied:
            warnings.warn(f"the SAE was trained on a model loaded with {unapplied} (its metadata's "
                          "model_from_pretrained_kwargs), which TransformerLens applies by rewriting the weights "
                          f"and so the activations; gremlinkit reads the checkpoint's own activations at {hook!r}, "
                          "so the SAE may not fit them: `gremlinkit check MODEL --sae SAE` measures its fit",
                          stacklevel=2)
        if not self.remote and sae.W_enc.device != self.device:
            sae = copy.deepcopy(sae).to(self.device)
        self.sae, self._sae_site, self._sae_context, self._warned_context = sae, hook, context, False

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae) if self.sae is not None else 0

    # ----------------------------------------------------------------- reading
    def batch(self, prompts: Prompts) -> Batch:
        batch = make_batch(prompts, self.tokenizer, max_length=self.n_ctx, bos=self.prepends_bos, device=self.device)
        self._check_context(batch.input_ids.shape[1], "a read")
        return batch

    @property
    def excluded_ids(self) -> list[int]:
        """Token ids that feature statistics leave out, as SAELens left them out of the SAE's training:
        where its metadata sets ``exclude_special_tokens``, the tokenizer's special tokens (True) or
        the ids it lists; else none."""
        value = getattr(getattr(getattr(self.sae, "cfg", None), "metadata", None), "exclude_special_tokens", None)
        if not value:
            return []
        return sorted(set(self.tokenizer.all_special_ids) if value is True else {int(i) for i in value})

    def counted(self, prompts: Prompts) -> torch.Tensor:
        """(B, T) True, in prompt indexing, at the tokens that feature statistics count: each prompt's
        own tokens but a BOS, less `excluded_ids`."""
        batch = self.batch(prompts)
        return batch.prompt_mask(skip_bos=True) & self._not_excluded(batch.to_prompt_index(batch.input_ids))

    def _not_excluded(self, ids: torch.Tensor) -> torch.Tensor:
        """True where ``ids`` holds no `excluded_ids` token (in whatever indexing ``ids`` is)."""
        return ~torch.isin(ids, torch.tensor(self.excluded_ids, dtype=ids.dtype, device=ids.device))

    def _check_context(self, tokens: int, what: str) -> None:
        """Warn once per SAE when ``what`` reaches past the context the SAE was trained on."""
        if self._sae_context is not None and tokens > self._sae_context and not self._warned_context:
            self._warned_context = True
            warnings.warn(f"{what} of {tokens} tokens passes the SAE's training context of {self._sae_context} "
                          f"(its metadata's context_size): its features are less reliable past it", stacklevel=3)

    def _resolve(self, names: Sequence[str]) -> list[sitemod.Site]:
        return sorted((self.site_map.resolve(n) for n in names), key=lambda s: s.order)

    def activations(self, prompts: Prompts, site: str, interventions: Sequence[Intervention] = ()) -> torch.Tensor:
        """Activations at ``site`` as (batch, pos, d), positions in each prompt's own indexing."""
        return self.activations_at(prompts, [site], interventions)[site]

    def activations_at(self, prompts: Prompts, names: Sequence[str], interventions: Sequence[Intervention] = (),
                       batch_size: int = 32, *, embeddings: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Several sites, read after ``interventions``, from one forward pass per chunk of prompts.

        Results are in prompt indexing, zero past each prompt's end. Row-targeted interventions
        and ``embeddings`` need the whole batch in one forward, so they switch chunking off. With
        ``embeddings`` that require grad (see `embed`), the results are differentiable.
        """
        batch = self.batch(prompts)
        plan = self._plan(interventions, batch)
        for n in names:
            self.site_map.resolve(n)
        whole = embeddings is not None or any(iv.rows is not None or isinstance(iv.pos, (list, tuple))
                                              for iv in interventions)
        parts = [batch] if whole else batch.split(batch_size)
        embed = sitemod.envoy_at(self.model, self.site_map.layout.embed)
        chunks: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        with torch.set_grad_enabled(embeddings is not None and embeddings.requires_grad):
            for part in parts:
                saved: dict[str, torch.Tensor] = {}  # filled inside the trace; nnsight runs the body in its own frame
                with self.model.trace(part.inputs(), remote=self.remote) as tracer:
                    if embeddings is not None:
                        embed.output = part.from_prompt_index(embeddings, embed.output)
                    self._edit_sites(plan, names, part.positions(), part.lengths, None, saved)
                    tracer.stop()  # nothing past the last site is needed: skip the rest of the model
                for n in names:
                    chunks[n].append(part.to_prompt_index(saved[n]))
        width = max(batch.sizes)
        return {n: torch.cat([torch.nn.functional.pad(c, (0, 0, 0, width - c.shape[1])) for c in cs])
                for n, cs in chunks.items()}

    @torch.no_grad()
    def features(self, prompts: Prompts, site: str | None = None, interventions: Sequence[Intervention] = (),
                 *, pre: bool = False) -> torch.Tensor:
        """SAE feature activations (batch, pos, d_sae) at the SAE's site, after ``interventions``;
        ``pre=True`` gives the encoder pre-activations instead (see `encode`)."""
        hook = self.sae_site
        if site is not None and site != hook:
            raise SiteError(f"the attached SAE reads {hook!r}, not {site!r}")
        return self.encode(self.activations(prompts, hook, interventions), pre=pre)

    def encode(self, acts: torch.Tensor, pre: bool = False) -> torch.Tensor:
        """SAE features of activations read at the SAE's site, computed in the SAE's dtype.

        ``pre=True`` gives the encoder pre-activations (`gremlinkit.interventions.encode_pre`): the
        value before the activation function or top-k cut, equal to the feature wherever it is on.
        """
        return ivmod.encode_pre(self.sae, acts) if pre else ivmod.encode(self.sae, acts)

    # ----------------------------------------------------------------- intervening
    def _plan(self, interventions: Sequence[Intervention], batch: Batch, extra: int = 0
              ) -> dict[str, list[Intervention]]:
        """Group interventions by site after checking them against the batch."""
        max_len = [n + extra for n in batch.sizes]
        for iv in interventions:
            ivmod.validate(iv, n_rows=len(batch.sizes), max_len=max_len, d_model=self.d_model, d_sae=self.d_sae)
        groups = ivmod.group_by_site(interventions, self.sae_site if self.sae is not None else None)
        for name in groups:
            self.site_map.resolve(name)
        return groups

    def _edit_sites(self, plan: dict[str, list[Intervention]], watch: Sequence[str], positions: torch.Tensor,
                    lengths: torch.Tensor, step: int | None, saved: dict[str, torch.Tensor]) -> None:
        """Inside a trace: apply ``plan`` site by site and save each watched site's (edited) value."""
        for site in self._resolve(sorted(set(plan) | set(watch))):
            x = sitemod.read(self.model, site)
            if site.name in plan:
                x = ivmod.apply(x, plan[site.name], self.sae, positions, lengths, step)
                sitemod.write(self.model, site, x)
            if site.name in watch:
                saved[site.name] = x.save()

    def run(self, prompts: Prompts, interventions: Sequence[Intervention] = (), *,
            embeddings: torch.Tensor | None = None, last: bool = False) -> torch.Tensor:
        """Logits (batch, pos, vocab) in prompt indexing, with ``interventions`` applied; with
        ``last``, each prompt's last token's alone (batch, vocab), the unembedding run on it alone
        (transformers' ``logits_to_keep``: a real vocabulary's logits at every position are large).

        ``embeddings`` (batch, pos, d_model), in prompt indexing, replace the token embeddings;
        if they require grad the logits are differentiable with respect to them (see `embed`).
        """
        batch = self.batch(prompts)
        plan = self._plan(interventions, batch)
        positions = batch.positions()
        embed = sitemod.envoy_at(self.model, self.site_map.layout.embed)
        grad = embeddings is not None and embeddings.requires_grad
        inputs = {**batch.inputs(), "logits_to_keep": 1} if last else batch.inputs()  # rows are left-padded
        with torch.set_grad_enabled(grad):
            with self.model.trace(inputs, remote=self.remote):
                if embeddings is not None:
                    embed.output = batch.from_prompt_index(embeddings, embed.output)
                self._edit_sites(plan, (), positions, batch.lengths, None, {})
                logits = self.model.output.logits.save()
        return logits[:, -1] if last else batch.to_prompt_index(logits)

    def one_hot(self, prompts: Prompts) -> torch.Tensor:
        """(batch, pos, vocab) one-hot tokens in prompt indexing; pass ``embed(one_hot)`` to `run`."""
        batch = self.batch(prompts)
        ids = batch.to_prompt_index(batch.input_ids)
        return torch.nn.functional.one_hot(ids, int(self.model.config.vocab_size)).to(self.dtype)

    def embed(self, one_hot: torch.Tensor) -> torch.Tensor:
        """Token embeddings of (possibly relaxed) one-hot tokens: ``one_hot @ W_E``, in the model's dtype."""
        weight = sitemod.envoy_at(self.model, self.site_map.layout.embed).weight
        with cpu_half.Float32Matmul() if self.float32_matmuls else contextlib.nullcontext():
            return one_hot.to(device=weight.device, dtype=weight.dtype) @ weight

    # ----------------------------------------------------------------- generating
    @torch.no_grad()
    def generate(self, prompts: Prompts, max_new_tokens: int, interventions: Sequence[Intervention] = (), *,
                 seed: int | Sequence[int] = 0, temperature: float = 1.0, record: Sequence[str] = ()
                 ) -> Generation:
        """Sample continuations with paired (Gumbel-max) noise fixed by ``seed`` and step.

        ``seed`` is one seed for every row or one per row; ``temperature=0`` is greedy. ``record``
        names sites, ``"features"`` or ``"features_pre"`` (the SAE's pre-activations, see `encode`),
        whose value at each step's newest position is returned as (batch, max_new_tokens, d).
        """
        if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise InputError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
        if not temperature >= 0:
            raise InputError(f"temperature={temperature!r} must be >= 0")
        batch = self.batch(prompts)
        width = batch.input_ids.shape[1]
        if self.n_ctx is not None and width + max_new_tokens > self.n_ctx:
            raise InputError(f"prompt width {width} + max_new_tokens={max_new_tokens} "
                             f"exceeds the model's context of {self.n_ctx}")
        self._check_context(width + max_new_tokens, "a generation")
        plan = self._plan(interventions, batch, extra=max_new_tokens)
        for r in record:
            if r not in FEATURE_RECORDS:
                self.site_map.resolve(r)
        vocab = int(self.model.config.vocab_size)
        seeds = [seed] if isinstance(seed, int) else list(seed)
        if len(seeds) not in (1, len(batch.sizes)):
            raise InputError(f"{len(seeds)} seeds for {len(batch.sizes)} prompts: pass one, or one per prompt")
        processor = GumbelMax(SeededGumbel(seeds, vocab, self.device), width, temperature)  # (1|B, V) per step
        records: dict[str, list] = {r: [] for r in record}
        watch = [self.sae_site if r in FEATURE_RECORDS else r for r in record]
        active = bool(plan or record)
        with self.model.generate(batch.inputs(), max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                 do_sample=False, logits_processor=[processor],
                                 pad_token_id=self.tokenizer.pad_token_id, remote=self.remote) as tracer:
            if active:
                for step in tracer.iter[:max_new_tokens]:
                    pos = batch.positions() if step == 0 else (batch.lengths + step - 1)[:, None]
                    seen: dict[str, torch.Tensor] = {}
                    now = {site: [e for e in ivs if ivmod.may_touch(e, batch.sizes, step)]
                           for site, ivs in plan.items()}  # edits that can apply at this step
                    self._edit_sites({k: v for k, v in now.items() if v}, watch, pos, batch.lengths, step, seen)
                    coded = {}  # one SAE encode serves both feature records
                    if any(r in FEATURE_RECORDS for r in record):
                        coded = dict(zip(FEATURE_RECORDS, ivmod.encode_with_pre(self.sae, seen[self.sae_site][:, -1])))
                    for r, w in zip(record, watch):
                        records[r].append(coded[r] if r in coded else seen[w][:, -1])  # (B, d): the newest position
            ids = tracer.result.save()
        new = ids[:, width:]
        text = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        stacked = {r: torch.stack(v, 1) for r, v in records.items()}  # (B, steps, d)
        return Generation(tokens=new, text=text, prompt_lengths=batch.lengths, records=stacked)

    # ----------------------------------------------------------------- SAE health
    @torch.no_grad()
    def check_sae(self, prompts: Prompts) -> dict[str, float]:
        """Explained variance, L0 and the next-token loss increase when the SAE is spliced in.

        Every real token counts; a BOS (when the batch has one) and `excluded_ids` are left out, as in
        training. The explained variance comes pooled over every token and without the massive
        activations (`gremlinkit.interventions.reconstruction_fit`). A wrong site mapping shows as a
        low explained variance and a large loss increase. Statistics are taken in float32 whatever
        the model's dtype.
        """
        site = self.sae_site
        batch = self.batch(prompts)
        positions = batch.positions()
        # (B, T): every real token, less a BOS and any excluded id
        keep = (positions >= int(batch.bos)) & self._not_excluded(batch.input_ids)
        clean_logits = self.run(prompts)
        with self.model.trace(batch.inputs(), remote=self.remote):
            x = sitemod.read(self.model, self.site_map.resolve(site))
            codes = ivmod.encode(self.sae, x)
            recon = self.sae.decode(codes).to(x.dtype)
            sitemod.write(self.model, self.site_map.resolve(site), torch.where(keep[..., None], recon, x))
            spliced_logits = self.model.output.logits.save()
            acts, codes = x.save(), codes.save()
        xs, fs = acts[keep].float(), codes[keep]  # (N, d), (N, d_sae)
        ids = batch.to_prompt_index(batch.input_ids)
        clean = _next_token_loss(clean_logits, ids, batch.lengths)
        spliced = _next_token_loss(batch.to_prompt_index(spliced_logits), ids, batch.lengths)
        return {**ivmod.reconstruction_fit(xs, self.sae.decode(fs)), "l0": float((fs > 0).sum(-1).float().mean()),
                "dead_fraction": float(1 - (fs > 0).any(0).float().mean()), "tokens": int(keep.sum()),
                "ce_loss_clean": clean, "ce_loss_spliced": spliced, "ce_loss_increase": spliced - clean}

    def __repr__(self) -> str:
        sae = f", sae at {self.sae_site} (d_sae={self.d_sae})" if self.sae is not None else ""
        return (f"Subject({self.name!r}, {self.model.config.model_type}, {self.site_map.n_layers} layers, "
                f"{self.device}, {str(self.dtype).removeprefix('torch.')}, prepends_bos={self.prepends_bos}{sae})")


def _sae_hook(sae: Any, site_map: sitemod.SiteMap) -> str | None:
    """The site an SAE reads: its metadata's ``hook_name``, or the site of the module its
    ``hf_hook_name`` names where the hook name is absent or not one this model has; an error where
    both name sites of this model and they differ."""
    meta = sae.cfg.metadata
    hook, module = meta.hook_name, getattr(meta, "hf_hook_name", None)
    if module is None:
        return hook
    mapped = site_map.site_of_module(module)
    if hook is not None and hook in site_map.names and hook != mapped:
        raise SiteError(f"the SAE's metadata contradicts itself: hook_name={hook!r}, but hf_hook_name={module!r} is "
                        f"site {mapped!r} of this model")
    return mapped if hook not in site_map.names else hook


def _sae_prepend_bos(sae: Any) -> bool | None:
    """The ``prepend_bos`` an SAE's metadata states, or None (no SAE, or silent metadata)."""
    meta = getattr(getattr(sae, "cfg", None), "metadata", None)
    value = getattr(meta, "prepend_bos", None)
    return None if value is None else bool(value)


# TransformerLens's weight processing, which changes the activations an SAE was trained on when on
# (sae_lens loads its training model without it unless model_from_pretrained_kwargs turns it on)
PROCESSING = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases",
              "refactor_factored_attn_matrices")
PLACEMENT = ("device", "n_devices", "dtype", "torch_dtype", "trust_remote_code", "revision", "first_n_layers")


def _sae_unapplied_kwargs(sae: Any) -> dict:
    """The SAE's ``model_from_pretrained_kwargs`` that may make its training activations differ from
    the checkpoint's own: processing turned on, and any key gremlinkit does not know. Placement
    (device, dtype, ...) and processing turned off change no activation."""
    kwargs = getattr(getattr(getattr(sae, "cfg", None), "metadata", None), "model_from_pretrained_kwargs", None)
    return {k: v for k, v in (kwargs or {}).items()
            if k not in PLACEMENT and not (k in PROCESSING and not v) and k != "default_prepend_bos"}


def _sae_context_size(sae: Any) -> int | None:
    """The context an SAE was trained on (its metadata's ``context_size``), or None where unstated."""
    value = getattr(getattr(getattr(sae, "cfg", None), "metadata", None), "context_size", None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SiteError(f"the SAE's metadata has context_size={value!r}: it must be a positive number of tokens "
                        f"(the context the SAE was trained on), or absent")
    return value


def load_sae(spec: Any, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
             root: Path | None = None) -> Any:
    """An SAE from a provider's name (the zoo's, built under ``root`` if given), a local sae_lens
    directory, a ``(release, sae_id)`` pair, or an SAE object.

    ``dtype=None`` keeps the SAE's own dtype. An SAE object given in another dtype is copied, never
    changed in place.
    """
    from sae_lens import SAE

    from gremlinkit import providers

    device = str(device)
    if isinstance(spec, (tuple, list)):
        release, sae_id = spec
        try:
            sae = SAE.from_pretrained(release, sae_id, device=device)
        except (OSError, ValueError) as err:
            raise HubError(_sae_hub_message(release, sae_id, err)) from err
    elif isinstance(spec, (str, Path)):
        entry = providers.find(str(spec), root)
        sae = SAE.load_from_disk(entry.path if entry is not None else Path(spec), device=device)
    else:
        return spec if dtype is None or spec.dtype == dtype else copy.deepcopy(spec).to(dtype=dtype)
    return sae if dtype is None else sae.to(dtype=dtype)


def default_device() -> str:
    """CUDA when it is available, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load(name_or_path: str | Path, *, sae: Any = None, device: str | torch.device | None = None,
         dtype: torch.dtype | str | None = None, bos: bool | None = None, remote: bool = False,
         sae_dtype: torch.dtype | None = None, zoo_root: Path | None = None, validate: bool = False,
         float32_matmuls: bool | None = None) -> Subject:
    """Load a model by a provider's name (the zoo's), local HF directory or hub id, with an optional SAE.

    ``device=None`` is CUDA when available, else the CPU; ``dtype=None`` is the checkpoint's own
    dtype (a string such as ``"bfloat16"`` works too). The SAE follows the model's device and keeps
    its own dtype unless ``sae_dtype`` is given. ``bos`` is the BOS policy (see `Subject`).

    A zoo model comes with its zoo SAE unless ``sae=False``. Hub ids go through nnsight's own
    loading path (``TransformersModel``), exactly as local directories do.

    ``float32_matmuls`` runs a half-precision model's matrix products in float32, rounding each result
    back (`gremlinkit.cpu_half`): ``None`` turns it on for a CPU without a native half-precision matmul,
    where it is several times faster and keeps half precision's memory.

    ``validate=True`` runs the self-check (`gremlinkit.check`: sites against transformers' hidden
    states, edits, generation, the SAE's fit) and raises one `gremlinkit.check.CheckError` listing
    every failure; turn it on for a checkpoint or SAE gremlinkit has not read before.
    """
    from nnsight import TransformersModel

    from gremlinkit import providers

    device = str(device) if device is not None else default_device()
    dtype = _dtype(dtype)
    if not remote:
        check_placement(device, dtype)
    if float32_matmuls and (remote or torch.device(device).type != "cpu"):
        raise InputError(f"float32_matmuls=True is for a model on this machine's CPU, not on {device!r}"
                         f"{' (remote)' if remote else ''}; leave it None")
    name = str(name_or_path)
    entry = providers.find(name, zoo_root)
    if entry is not None and entry.kind == "model":
        source = entry.path
        if sae is None and entry.default_sae:
            sae = entry.default_sae
        bos = entry.bos if bos is None else bos
    else:
        source = name_or_path
    # `device`, not `device_map`: transformers' pipeline (through which nnsight loads) moves a model
    # loaded with device_map="cpu" or "cuda:1" onto the first GPU when there is one.
    kwargs = {} if remote else {"dispatch": True, "device": device}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        model = TransformersModel(str(source), task="text-generation", **kwargs)
    except OSError as err:
        if Path(str(source)).exists():
            raise
        raise HubError(_model_hub_message(name, err)) from err
    sae_obj = load_sae(sae, device=device, dtype=sae_dtype, root=zoo_root) if sae not in (None, False) else None
    subject = Subject(model, sae_obj, name=Path(name).name if Path(name).exists() else name, remote=remote, bos=bos)
    if float32_matmuls is None:
        float32_matmuls = not remote and subject.device.type == "cpu" and not cpu_half.native_matmul(subject.dtype)
    if float32_matmuls:
        cpu_half.float32_matmuls(model._module)
    subject.float32_matmuls = bool(float32_matmuls)
    if validate:
        from gremlinkit import check

        check.raise_on_failure(check.run(subject))
    return subject


def _model_hub_message(name: str, err: Exception) -> str:
    from huggingface_hub import constants

    return (f"could not load model {name!r}: it is no zoo name and no local directory, and the Hugging Face hub "
            f"did not give it ({str(err).splitlines()[0]}). Tried {constants.ENDPOINT}/{name} and the hub cache "
            f"{constants.HF_HUB_CACHE}. Offline, download it on a connected machine (`hf download {name} "
            f"--local-dir DIR`), copy DIR here and load it by path: gremlinkit.load('DIR')")


def _sae_hub_message(release: str, sae_id: str, err: Exception) -> str:
    return (f"could not load SAE {sae_id!r} of release {release!r} through sae_lens's registry of pretrained SAEs "
            f"and the hub ({str(err).splitlines()[0]}). Offline, save it on a connected machine "
            f"(`SAE.from_pretrained({release!r}, {sae_id!r}).save_model('DIR')`), copy DIR here and load it by "
            "path: sae='DIR'")


def check_placement(device: str, dtype: torch.dtype | None) -> None:
    """A clear error, before anything loads, for a device this machine lacks or a dtype it cannot
    run there (bfloat16 on a GPU older than Ampere)."""
    try:
        where = torch.device(device)
    except RuntimeError:
        raise InputError(f"device={device!r} is not a device: use 'cpu', 'cuda', 'cuda:1', ...") from None
    if where.type != "cuda":
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise InputError(f"device={device!r}: this machine has no CUDA GPU that torch {torch.__version__} can "
                         "use; use device='cpu'")
    if where.index is not None and where.index >= count:
        raise InputError(f"device={device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise InputError(f"dtype=bfloat16 cannot run on {device!r} ({torch.cuda.get_device_name(where)}); "
                         "use dtype='float16' or 'float32'")


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise InputError(f"dtype={dtype!r} is not a torch dtype: use e.g. 'float32', 'bfloat16' or 'float16'")
    return value


def _next_token_loss(logits: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> float:
    """Mean next-token cross-entropy over real tokens; logits and ids in prompt indexing."""
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")
    valid = torch.arange(ids.shape[1] - 1, device=ids.device)[None] < (lengths - 1)[:, None]
    return float(nll[valid].mean())
