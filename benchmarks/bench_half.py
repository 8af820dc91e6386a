"""Half precision on this CPU: native matmuls against `gremlinkit.cpu_half`'s float32 matmuls.

On smollm2-135m (built by `make real-model`): one forward of 8 stories x 64 tokens (`Subject.run`),
one GCG-style gradient through one-hot tokens (`Subject.embed`), and a 4-prompt, 32-token
generation recording the SAE's features, each in float32, in bfloat16 with torch's own matmuls, and
in bfloat16 with float32 matmuls (best of three). Prints the times, the ratios, whether this CPU has
a native bfloat16 matmul, and how far each bfloat16 forward's logits are from float32's.

    .venv/bin/python benchmarks/bench_half.py
"""

from __future__ import annotations

import random
import time

import torch

import gremlinkit
from gremlinkit import cpu_half, providers, stories


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(subject, texts: list[str]) -> tuple[dict[str, float], torch.Tensor]:
    def gradient():
        one_hot = subject.one_hot(texts[:2]).requires_grad_()
        subject.run(texts[:2], embeddings=subject.embed(one_hot), last=True).float().logsumexp(-1).sum().backward()

    subject.run(texts[:1])  # warm-up
    logits = subject.run(texts)
    return {"forward": best(lambda: subject.run(texts)), "gradient": best(gradient),
            "generate": best(lambda: subject.generate(texts[:4], 32, record=["features"]), repeat=1)}, logits


def main() -> None:
    if providers.find("smollm2-135m") is None or not providers.find("smollm2-135m").path.exists():
        print("smollm2-135m is not built: run `make real-model`")
        return
    torch.set_num_threads(2)
    tokenizer = gremlinkit.load("smollm2-135m", device="cpu", sae=False).tokenizer
    rng = random.Random(0)
    texts = [tokenizer.decode(tokenizer(" ".join(stories.story(rng, 8)[0]))["input_ids"][:64]) for _ in range(8)]
    runs = {"float32": dict(dtype="float32"), "bfloat16, native": dict(dtype="bfloat16", float32_matmuls=False),
            "bfloat16, float32 matmuls": dict(dtype="bfloat16", float32_matmuls=True)}
    print(f"CPU {torch.backends.cpu.get_cpu_capability()}, native bfloat16 matmul: "
          f"{cpu_half.native_matmul(torch.bfloat16)}")
    times, logits = {}, {}
    for name, kwargs in runs.items():
        subject = gremlinkit.load("smollm2-135m", device="cpu", **kwargs)
        times[name], logits[name] = measure(subject, texts)
        print(f"{name:>27}: " + ", ".join(f"{k} {v:.2f} s" for k, v in times[name].items()))
    full = logits["float32"]
    for name in list(runs)[1:]:
        ratio = {k: times[name][k] / times["float32"][k] for k in times[name]}
        error = float((logits[name].float() - full).norm() / full.norm())
        print(f"{name:>27}: " + ", ".join(f"{k} {v:.2f}x float32" for k, v in ratio.items())
              + f"; logits' relative L2 error against float32 {error:.4f}")
    native, mixed = times["bfloat16, native"], times["bfloat16, float32 matmuls"]
    print("float32 matmuls against native bfloat16: "
          + ", ".join(f"{k} {native[k] / mixed[k]:.1f}x faster" for k in native))


if __name__ == "__main__":
    main()
