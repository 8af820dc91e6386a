"""K per-row SAE interventions: one batched gremlinkit forward vs a loop of K traces vs a raw forward.

The floor is transformers running the same K-row batch with no intervention at all.
"""

from __future__ import annotations

import time

import torch

import gremlinkit
from gremlinkit import interventions as iv
from gremlinkit.zoo import corpus, lm


def main(k: int = 128) -> dict[str, float]:
    torch.set_num_threads(2)
    subject = gremlinkit.load("toy-base")
    doc = torch.from_numpy(lm.encode_docs(corpus.generate(1, seed=11), subject.tokenizer)[0][:64])
    prompts = [doc] * k
    feats = subject.features([doc])[0]  # (T, d_sae)
    edits = [iv.ablate(int(feats[8 + i % 48].argmax()), pos=8 + i % 48, rows=i) for i in range(k)]
    hf = subject.model._module
    batch = subject.batch(prompts)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():  # kernels run asynchronously: wait for them
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    subject.run(prompts[:2], edits[:2])  # warm-up
    with torch.no_grad():
        floor = min(timed(lambda: hf(**batch.inputs())) for _ in range(3))
    batched = min(timed(lambda: subject.run(prompts, edits)) for _ in range(3))
    loop = timed(lambda: [subject.run([doc], [iv.FeatureEdit(**{**e.__dict__, "rows": None})]) for e in edits])
    print(f"{k} single-feature ablations on a {len(doc)}-token story")
    print(f"  raw forward floor (no edits)   {floor * 1000:8.1f} ms")
    print(f"  gremlinkit batched             {batched * 1000:8.1f} ms  ({batched / floor:.2f}x the floor)")
    print(f"  naive loop of {k} traces       {loop * 1000:8.1f} ms  ({loop / batched:.1f}x the batched run)")
    return {"floor_s": floor, "batched_s": batched, "loop_s": loop}


if __name__ == "__main__":
    main()
