"""Reading activations: gremlinkit (one nnsight trace per 32-prompt chunk) vs a naive per-prompt loop vs a raw forward.

Each reads the last block's residual stream, and the floor is the model body's forward (no LM
head, no nnsight) over the same 32-row chunks, so both run the same layers. Prints the time of
each and the ratios, measured in one run on toy-base, then on smollm2-135m (float32 on the CPU,
bfloat16 on a GPU where there is one).
"""

from __future__ import annotations

import time

import torch

import gremlinkit
from gremlinkit.errors import GremlinkitError
from gremlinkit.zoo import corpus, lm


def _best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():  # kernels run asynchronously: wait for them
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(n_docs: int = 128) -> dict[str, float]:
    torch.set_num_threads(2)
    subject = gremlinkit.load("toy-base")
    docs = [torch.from_numpy(d) for d in lm.encode_docs(corpus.generate(n_docs, seed=5), subject.tokenizer)]
    t = compare(subject, docs, f"blocks.{subject.site_map.n_layers - 1}.hook_resid_post")
    real()
    return t


def real(n_docs: int = 32) -> dict[str, float]:
    from gremlinkit.zoo import registry
    from gremlinkit.zoo.real import heldout_texts

    try:
        registry.require("smollm2-135m")
    except GremlinkitError as e:  # not built here (a GPU machine the weights did not travel to, say)
        print(f"smollm2-135m: skipped ({e})")
        return {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    subject = gremlinkit.load("smollm2-135m", device=device, dtype=dtype)
    docs = heldout_texts(registry.path("smollm2-135m-sae"))[:n_docs]
    print(f"smollm2-135m on {device} in {str(dtype).removeprefix('torch.')}:")
    return compare(subject, docs, f"blocks.{subject.site_map.n_layers - 1}.hook_resid_post")


def compare(subject, docs, site: str) -> dict[str, float]:
    batch = subject.batch(docs)
    hf = subject.model._module

    def raw_forward():  # the floor: the same 32-row chunks through the transformers body, no nnsight
        with torch.no_grad():
            for part in batch.split(32):
                hf.base_model(**part.inputs())

    def batched():
        subject.activations(docs, site)

    def naive_loop():
        for d in docs:
            subject.activations([d], site)

    batched()  # warm-up: nnsight compiles the trace body once
    t = {"raw_forward_s": _best_of(raw_forward), "gremlinkit_batched_s": _best_of(batched),
         "naive_per_prompt_loop_s": _best_of(naive_loop, repeats=1)}
    tokens = sum(batch.sizes)
    print(f"read {site} over {len(docs)} documents ({tokens} tokens)")
    for k, v in t.items():
        print(f"  {k:26s} {v * 1000:8.1f} ms  ({tokens / v:,.0f} tokens/s)")
    print(f"  batched / raw forward       {t['gremlinkit_batched_s'] / t['raw_forward_s']:.2f}x")
    print(f"  naive loop / batched        {t['naive_per_prompt_loop_s'] / t['gremlinkit_batched_s']:.1f}x")
    return t


if __name__ == "__main__":
    main()
