"""`Subject`: a language model under study, wrapped in nnsight, with an optional sae_lens SAE."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from gremlinkit import sites as sitemod
from gremlinkit.errors import InputError, SiteError
from gremlinkit.generation import Generation, GumbelMax, gumbel_noise
from gremlinkit.prompts import Batch, Prompts, make_batch


class Subject:
    """A model (``.model``, an nnsight ``TransformersModel``), its ``.tokenizer`` and its ``.sae``."""

    def __init__(self, model: Any, sae: Any = None, name: str = "", remote: bool = False):
        self.model = model
        self.tokenizer = model.tokenizer
        self.name = name
        self.remote = remote
        self.site_map = sitemod.SiteMap.for_config(model.config)
        self.sae = None
        if sae is not None:
            self.attach_sae(sae)

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
        return self.sae.cfg.metadata.hook_name

    def attach_sae(self, sae: Any, site: str | None = None) -> None:
        """Attach ``sae`` at ``site`` (default: the hook name in its metadata), checking it fits."""
        hook = site or sae.cfg.metadata.hook_name
        if hook is None:
            raise SiteError("the SAE's metadata names no hook_name; pass site= explicitly")
        if site is not None and sae.cfg.metadata.hook_name not in (None, site):
            raise SiteError(f"this SAE was trained for site {sae.cfg.metadata.hook_name!r}, not {site!r}")
        self.site_map.resolve(hook)  # raises for an unknown site
        if sae.cfg.d_in != self.d_model:
            raise SiteError(f"SAE d_in={sae.cfg.d_in} does not match site {hook!r}, whose width is {self.d_model}")
        sae.cfg.metadata.hook_name = hook
        self.sae = sae

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae) if self.sae is not None else 0

    # ----------------------------------------------------------------- reading
    def batch(self, prompts: Prompts) -> Batch:
        return make_batch(prompts, self.tokenizer, max_length=self.n_ctx)

    def _resolve(self, names: Sequence[str]) -> list[sitemod.Site]:
        return sorted((self.site_map.resolve(n) for n in names), key=lambda s: s.order)

    @torch.no_grad()
    def activations(self, prompts: Prompts, site: str) -> torch.Tensor:
        """Activations at ``site`` as (batch, pos, d), positions in each prompt's own indexing."""
        return self.activations_at(prompts, [site])[site]

    @torch.no_grad()
    def activations_at(self, prompts: Prompts, names: Sequence[str], batch_size: int = 32
                       ) -> dict[str, torch.Tensor]:
        """Several sites from one forward pass per chunk of ``batch_size`` prompts.

        Results are in prompt indexing, zero past each prompt's end.
        """
        batch = self.batch(prompts)
        resolved = self._resolve(names)
        chunks: dict[str, list[torch.Tensor]] = {s.name: [] for s in resolved}
        for part in batch.split(batch_size):
            saved: list[torch.Tensor] = []  # filled inside the trace; nnsight runs the body in its own frame
            with self.model.trace(part.inputs(), remote=self.remote):
                for s in resolved:
                    saved.append(sitemod.read(self.model, s).save())
            for s, value in zip(resolved, saved):
                chunks[s.name].append(part.to_prompt_index(value))
        width = int(batch.lengths.max())
        return {n: torch.cat([torch.nn.functional.pad(c, (0, 0, 0, width - c.shape[1])) for c in cs])
                for n, cs in chunks.items()}

    @torch.no_grad()
    def features(self, prompts: Prompts, site: str | None = None) -> torch.Tensor:
        """SAE feature activations (batch, pos, d_sae) at the SAE's site."""
        hook = self.sae_site
        if site is not None and site != hook:
            raise SiteError(f"the attached SAE reads {hook!r}, not {site!r}")
        acts = self.activations(prompts, hook)
        return self.sae.encode(acts)

    # ----------------------------------------------------------------- generating
    @torch.no_grad()
    def generate(self, prompts: Prompts, max_new_tokens: int, *, seed: int | Sequence[int] = 0,
                 temperature: float = 1.0) -> Generation:
        """Sample continuations with paired (Gumbel-max) noise fixed by ``seed`` and step.

        ``seed`` may be one seed for every row or one per row. ``temperature=0`` is greedy.
        """
        if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise InputError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
        if not temperature >= 0:
            raise InputError(f"temperature={temperature!r} must be >= 0")
        batch = self.batch(prompts)
        if self.n_ctx is not None and batch.input_ids.shape[1] + max_new_tokens > self.n_ctx:
            raise InputError(f"prompt width {batch.input_ids.shape[1]} + max_new_tokens={max_new_tokens} "
                             f"exceeds the model's context of {self.n_ctx}")
        vocab = int(self.model.config.vocab_size)
        if isinstance(seed, int):
            noise = gumbel_noise(seed, max_new_tokens, vocab)
        else:
            noise = torch.stack([gumbel_noise(s, max_new_tokens, vocab) for s in seed])
        processor = GumbelMax(noise, batch.input_ids.shape[1], temperature)
        with self.model.generate(batch.inputs(), max_new_tokens=max_new_tokens, do_sample=False,
                                 logits_processor=[processor], pad_token_id=self.tokenizer.pad_token_id,
                                 remote=self.remote) as tracer:
            ids = tracer.result.save()
        new = ids[:, batch.input_ids.shape[1]:]
        text = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return Generation(tokens=new, text=text, prompt_lengths=batch.lengths)

    def __repr__(self) -> str:
        sae = f", sae at {self.sae_site} (d_sae={self.d_sae})" if self.sae is not None else ""
        return f"Subject({self.name!r}, {self.model.config.model_type}, {self.site_map.n_layers} layers{sae})"


def load_sae(spec: Any, device: str = "cpu") -> Any:
    """An SAE from a zoo name, a local sae_lens directory, a ``(release, sae_id)`` pair, or an SAE."""
    from sae_lens import SAE

    from gremlinkit.zoo import registry

    if isinstance(spec, (tuple, list)):
        release, sae_id = spec
        return SAE.from_pretrained(release, sae_id, device=device)
    if isinstance(spec, (str, Path)):
        if str(spec) in registry.ARTEFACTS:
            return SAE.load_from_disk(registry.path(str(spec)), device=device)
        return SAE.load_from_disk(Path(spec), device=device)
    return spec


def load(name_or_path: str | Path, *, sae: Any = None, device: str = "cpu", remote: bool = False,
         zoo_root: Path | None = None) -> Subject:
    """Load a model by zoo name, local HF directory or hub id, with an optional SAE.

    A zoo model comes with its zoo SAE unless ``sae=False``. Hub ids go through nnsight's own
    loading path (``TransformersModel``), exactly as local directories do.
    """
    from nnsight import TransformersModel

    from gremlinkit.zoo import registry

    name = str(name_or_path)
    if name in registry.ARTEFACTS:
        art = registry.ARTEFACTS[name]
        source = registry.path(name, zoo_root)
        if sae is None and art.default_sae:
            sae = registry.path(art.default_sae, zoo_root)
    else:
        source = name_or_path
    kwargs = {} if remote else {"dispatch": True, "device_map": device}
    model = TransformersModel(str(source), task="text-generation", **kwargs)
    model.tokenizer.padding_side = "left"
    sae_obj = load_sae(sae, device=device) if sae not in (None, False) else None
    return Subject(model, sae_obj, name=Path(name).name if Path(name).exists() else name, remote=remote)
