"""The site map: the only code that knows module paths.

Everything else names activations in the TransformerLens/SAELens hook grammar::

    hook_embed, hook_pos_embed                       token / position embeddings
    blocks.{L}.hook_resid_pre                        residual stream entering block L
    blocks.{L}.hook_attn_out                         attention output of block L
    blocks.{L}.hook_resid_mid                        residual after attention (sequential blocks only)
    blocks.{L}.mlp.hook_pre                          MLP pre-activations (before the nonlinearity)
    blocks.{L}.hook_mlp_out                          MLP output of block L
    blocks.{L}.hook_resid_post                       residual stream leaving block L
    ln_final.hook_normalized                         output of the final norm

One ``Layout`` row per architecture family says where those live. A site is read from a
module's input or output; modules that return a tuple (attention, older decoder layers)
have their first element used, modules that return a tensor (transformers 5 blocks) are
used as they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gremlinkit.errors import SiteError


@dataclass(frozen=True)
class Layout:
    blocks: str
    embed: str
    pos_embed: str | None
    final_norm: str
    attn: str
    mlp: str
    mid_norm: str | None  # module whose *input* is resid_mid; None where blocks are parallel
    mlp_pre: str | None  # module (inside the MLP) whose output is the pre-activation; None: no such site
    notes: str = ""  # what a site means where the family differs from GPT-2's block
    post_norms: bool = False  # the block norms attn_out and mlp_out before adding them to the stream
    parallel: bool = False  # attention and MLP read the same input, always: the block has no resid_mid


_LLAMA = Layout("model.layers", "model.embed_tokens", None, "model.norm", "self_attn", "mlp",
                "post_attention_layernorm", "gate_proj", "mlp.hook_pre is the gate projection's output")
# Gemma 2 and 3 norm the attention output before adding it, so resid_mid enters the pre-MLP norm.
_GEMMA = Layout("model.layers", "model.embed_tokens", None, "model.norm", "self_attn", "mlp",
                "pre_feedforward_layernorm", "gate_proj",
                "hook_attn_out and hook_mlp_out are read before the post-attention and post-MLP norms that "
                "the block adds", post_norms=True)
_MOE = "hook_mlp_out is the sparse block's output: the routed experts' weighted sum{}; no mlp.hook_pre (each " \
       "expert has its own)"
LAYOUTS: dict[str, Layout] = {
    "gpt2": Layout("transformer.h", "transformer.wte", "transformer.wpe", "transformer.ln_f", "attn", "mlp", "ln_2",
                   "c_fc"),
    "gpt_neox": Layout("gpt_neox.layers", "gpt_neox.embed_in", None, "gpt_neox.final_layer_norm", "attention",
                       "mlp", "post_attention_layernorm", "dense_h_to_4h"),
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "mistral": _LLAMA,
    "smollm3": _LLAMA,
    "olmo": _LLAMA,
    "stablelm": _LLAMA,
    "gemma2": _GEMMA,
    "gemma3_text": _GEMMA,
    # Phi-3 fuses the gate and up projections into one module, so no module's output is the gate alone.
    "phi3": Layout("model.layers", "model.embed_tokens", None, "model.norm", "self_attn", "mlp",
                   "post_attention_layernorm", None, "no mlp.hook_pre: gate and up projections are one fused module"),
    # OLMo 2 norms after attention and after the MLP, not before: resid_mid is the MLP's own input.
    "olmo2": Layout("model.layers", "model.embed_tokens", None, "model.norm", "self_attn", "mlp", "mlp",
                    "gate_proj", "hook_attn_out and hook_mlp_out are read before the post-norms that the block adds",
                    post_norms=True),
    # Phi-1/2 and GPT-J: attention and MLP read one layer norm, in parallel, as GPT-NeoX's parallel mode.
    "phi": Layout("model.layers", "model.embed_tokens", None, "model.final_layernorm", "self_attn", "mlp", None, "fc1",
                  "attention and MLP read one norm in parallel: no hook_resid_mid; mlp.hook_pre is fc1's output",
                  parallel=True),
    "gptj": Layout("transformer.h", "transformer.wte", None, "transformer.ln_f", "attn", "mlp", None, "fc_in",
                   "attention and MLP read one norm in parallel: no hook_resid_mid; mlp.hook_pre is fc_in's output",
                   parallel=True),
    "qwen2_moe": Layout("model.layers", "model.embed_tokens", None, "model.norm", "self_attn", "mlp",
                        "post_attention_layernorm", None, _MOE.format(" plus the gated shared expert")),
    "mixtral": Layout("model.layers", "model.embed_tokens", None, "model.norm", "self_attn", "mlp",
                      "post_attention_layernorm", None, _MOE.format("")),
}

# Families transformers has that the map does not, and why: named in the error and the README's table.
UNMAPPED: dict[str, str] = {
    "falcon": "its block is one of three layouts (sequential, parallel with one norm, parallel with two), chosen "
              "by the config: not mapped yet",
    "mamba": "state-space mixer blocks: no attention or MLP output for the hook grammar to name",
    "mamba2": "state-space mixer blocks: no attention or MLP output for the hook grammar to name",
    "t5": "an encoder-decoder: two residual streams and cross-attention, where the hook grammar names one stream",
    "bart": "an encoder-decoder: two residual streams and cross-attention, where the hook grammar names one stream",
}

# Within a block, sites are reached in this order; reads in one trace must follow it.
_BLOCK_HOOKS = {"hook_resid_pre": 0, "hook_attn_out": 1, "hook_resid_mid": 2, "mlp.hook_pre": 3,
                "hook_mlp_out": 4, "hook_resid_post": 5}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(" + "|".join(re.escape(h) for h in _BLOCK_HOOKS) + r")$")


@dataclass(frozen=True)
class Site:
    name: str
    module: str  # dotted module path inside the HF model
    io: str  # "input" or "output"
    order: tuple[int, int]  # execution order key

    def __post_init__(self) -> None:
        if self.io not in ("input", "output"):
            raise SiteError(f"site {self.name!r}: io={self.io!r} must be 'input' or 'output'")


class SiteMap:
    """Resolves site names for one model."""

    def __init__(self, model_type: str, n_layers: int, parallel_residual: bool = False):
        if model_type not in LAYOUTS:
            why = f": {UNMAPPED[model_type]}" if model_type in UNMAPPED else ""
            raise SiteError(f"architecture {model_type!r} has no site layout{why} (gremlinkit.sites.LAYOUTS maps "
                            f"{', '.join(sorted(LAYOUTS))}); add a Layout row for it, see docs/getting-started.md")
        self.model_type, self.n_layers = model_type, n_layers
        self.layout = LAYOUTS[model_type]
        self.parallel_residual = parallel_residual or self.layout.parallel

    @classmethod
    def for_config(cls, config: Any) -> "SiteMap":
        return cls(config.model_type, config.num_hidden_layers,
                   bool(getattr(config, "use_parallel_residual", False)))

    @property
    def names(self) -> list[str]:
        out = ["hook_embed"] + (["hook_pos_embed"] if self.layout.pos_embed else [])
        for layer in range(self.n_layers):
            out += [f"blocks.{layer}.{h}" for h in _BLOCK_HOOKS
                    if (h != "hook_resid_mid" or not self.parallel_residual)
                    and (h != "mlp.hook_pre" or self.layout.mlp_pre is not None)]
        return out + ["ln_final.hook_normalized"]

    def resolve(self, name: str) -> Site:
        lay = self.layout
        if name == "hook_embed":
            return Site(name, lay.embed, "output", (-1, 0))
        if name == "hook_pos_embed" and lay.pos_embed:
            return Site(name, lay.pos_embed, "output", (-1, 1))
        if name == "ln_final.hook_normalized":
            return Site(name, lay.final_norm, "output", (self.n_layers, 0))
        match = _BLOCK_RE.match(name)
        if not match or name not in self.names:
            raise SiteError(f"unknown site {name!r} for this {self.model_type} model with {self.n_layers} "
                            f"layers; valid sites look like 'blocks.0.hook_resid_pre' ... "
                            f"'blocks.{self.n_layers - 1}.hook_resid_post' (see subject.sites)")
        layer, hook = int(match.group(1)), match.group(2)
        block = f"{lay.blocks}.{layer}"
        module, io = {
            "hook_resid_pre": (block, "input"),
            "hook_attn_out": (f"{block}.{lay.attn}", "output"),
            "hook_resid_mid": (f"{block}.{lay.mid_norm}", "input"),
            "mlp.hook_pre": (f"{block}.{lay.mlp}.{lay.mlp_pre}", "output"),
            "hook_mlp_out": (f"{block}.{lay.mlp}", "output"),
            "hook_resid_post": (block, "output"),
        }[hook]
        return Site(name, module, io, (layer, _BLOCK_HOOKS[hook]))


    def site_of_module(self, path: str) -> str:
        """The site that is the output of module ``path`` (its input, where ``path`` ends in
        ``.input``), as SAELens's ``hf_hook_name`` names an activation: ``model.layers.5`` is
        ``blocks.5.hook_resid_post`` on a Llama."""
        module, io = path, "output"
        if path.endswith((".input", ".output")):
            module, _, io = path.rpartition(".")
        for name in self.names:
            site = self.resolve(name)
            if (site.module, site.io) == (module, io):
                return name
        raise SiteError(f"module {path!r} is no site of this {self.model_type} model: its sites are the outputs of "
                        f"{self.layout.embed!r}, {self.layout.blocks}.L (L in 0..{self.n_layers - 1}) and its "
                        f"{self.layout.attn!r} and {self.layout.mlp!r}, and {self.layout.final_norm!r}, and the inputs "
                        f"of {self.layout.blocks}.L ('.input')")


def envoy_at(model: Any, path: str) -> Any:
    """The nnsight envoy at a dotted module path."""
    node = model
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def read(model: Any, site: Site) -> Any:
    """Inside a trace: the site's activation (the first element when the module deals in tuples)."""
    env = envoy_at(model, site.module)
    value = env.input if site.io == "input" else env.output
    return value[0] if isinstance(value, tuple) else value


def write(model: Any, site: Site, new: Any) -> None:
    """Inside a trace: replace the site's activation, keeping any other tuple elements."""
    env = envoy_at(model, site.module)
    if site.io == "input":
        env.input = new
        return
    old = env.output
    env.output = (new, *old[1:]) if isinstance(old, tuple) else new
