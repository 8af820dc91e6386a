"""A census over Ray workers (`gremlinkit.workers`), measured in one run.

1. **Backends, on toy-base.** The same on-policy persistence scan (32 features x 64 prompts, horizon
   48, units of 128 interventions) three ways: the local backend at one torch thread, Ray with one
   worker and Ray with two (one thread each). Each backend first runs a small scan, so that every
   worker has loaded the model and run once, as through most of a real census: the cluster's start
   and that warm-up are timed apart, once per pool. Prints Ray's overhead over the local backend,
   the speed-up of two workers over one, and whether the tables are identical.
2. **One unit's cost** at the census's settings (horizon 96, on-policy; units of 64 interventions
   on the CPU, 256 and 2,048 on a GPU): on smollm2-135m where it is built (bfloat16; float32 too on
   the CPU); on a GPU, also on random-weight models of smollm2-135m's shape and of a 2B model's
   (Gemma 2 2B's dimensions and vocabulary) with a 16,384-feature SAE: a unit's cost depends on the
   shapes, not on the weights' values.
3. **A projection** of a full census onto N workers from those unit costs.

    .venv/bin/python benchmarks/bench_census.py [--part backends|units|all]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time

import torch
from tqdm import tqdm

from gremlinkit.errors import GremlinkitError
from gremlinkit.experiments import persistence as ps
from gremlinkit.results import peak_rss_mb

UNIT = dict(chunk_size=256, horizon=96, mode="on_policy", intervention="add", scale=8.0, n_bootstrap=10)
PROJECTED = [  # (census, features, prompts, models)
    ("smollm2-135m SAE, 4 models", 4096, 64, 4),
    ("2B model, 16k-feature SAE, 4 models", 16384, 64, 4),
]


def backends(n_features: int = 32, n_prompts: int = 64, horizon: int = 48, chunk: int = 128) -> dict[str, float]:
    """Part 1: the local backend against Ray with one and two workers, on one census of toy-base."""
    import gremlinkit
    from gremlinkit import workers

    torch.set_num_threads(1)
    toy = gremlinkit.load("toy-base", device="cpu")
    cfg = ps.PersistenceConfig(model="toy-base", features=f"random-{n_features}", n_prompts=n_prompts,
                               horizon=horizon, chunk_size=chunk, mode="on_policy", scale=32.0)
    n = n_features * n_prompts
    print(f"census of toy-base: {n_features} features x {n_prompts} prompts = {n} interventions, horizon {horizon}, "
          f"{n // chunk} units of {chunk}; one torch thread per worker")
    tables, times = {}, {}
    for name, make in (("local", lambda: workers.Local(threads=1)),
                       ("ray, 1 worker", lambda: workers.RayPool(workers=1, threads=1)),
                       ("ray, 2 workers", lambda: workers.RayPool(workers=2, threads=1))):
        t0 = time.perf_counter()
        with make() as runner:
            # a small scan first, so that every worker has loaded the model and run once, as it has
            # through most of a real census's thousands of units
            warm = dataclasses.replace(cfg, features=[1, 2, 3, 4], n_prompts=2, chunk_size=2,
                                       output_dir=tempfile.mkdtemp())
            ps.scan(warm, {"toy-base": toy}, runner)
            started = time.perf_counter() - t0
            t0 = time.perf_counter()
            tables[name] = ps.scan(dataclasses.replace(cfg, output_dir=tempfile.mkdtemp()), {"toy-base": toy}, runner)
            times[name] = time.perf_counter() - t0
        print(f"  {name:15s} scan {times[name]:6.1f} s ({n / times[name]:5.1f} interventions/s); "
              f"start and warm-up {started:4.1f} s")
    same = all(tables["local"].equals(t) for t in tables.values())
    overhead = times["ray, 1 worker"] / times["local"] - 1
    speedup = times["ray, 1 worker"] / times["ray, 2 workers"]
    print(f"  Ray overhead over local, 1 worker: {overhead:+.1%}; 2 workers over 1: {speedup:.2f}x; "
          f"tables identical: {same}")
    return {"overhead": overhead, "speedup": speedup, "identical": float(same)}


def random_subject(config, d_sae: int, device: str, dtype: torch.dtype, tokenizer):
    """A random-weight model of ``config``'s shape with a random SAE at its middle layer."""
    from nnsight import TransformersModel
    from sae_lens import SAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from transformers import AutoModelForCausalLM

    from gremlinkit.subject import Subject

    torch.manual_seed(0)
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    layer = config.num_hidden_layers // 2
    sae = SAE.from_dict(StandardSAEConfig(d_in=config.hidden_size, d_sae=d_sae, device=device, metadata=SAEMetadata(
        hook_name=f"blocks.{layer}.hook_resid_post")).to_dict())
    return Subject(TransformersModel(hf, tokenizer=tokenizer), sae, name=config.model_type)


def unit_cost(subject, label: str, units: int = 3, warm_up: int = 1, chunk_size: int = UNIT["chunk_size"]) -> float:
    """Seconds per intervention in units of ``chunk_size`` (the median unit of ``units``, after
    ``warm_up`` more) at the census's settings otherwise."""
    cfg = ps.PersistenceConfig(model=label, world="persona", features=list(range(chunk_size)),
                               n_prompts=units + warm_up, positions=[16], **{**UNIT, "chunk_size": chunk_size})
    plan = ps.plan(cfg, subject)
    times = []
    for unit in tqdm(plan.units(), desc=label, unit="unit", leave=False):
        if subject.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        ps.run_unit(subject, cfg, plan.prompts, unit, plan.chunk(unit), plan.values)
        if subject.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    cost = statistics.median(times[warm_up:])
    where = f"{subject.device.type}, {str(subject.dtype).removeprefix('torch.')}"
    print(f"  {label} ({where}): {cost:6.2f} s per unit of {chunk_size} interventions "
          f"({chunk_size / cost:,.0f} interventions/s)")
    return cost / chunk_size


def units(chunk_sizes: tuple[int, ...] = (256,)) -> dict[str, float]:
    """Part 2: the cost of an intervention in a unit, on smollm2-135m and, on a GPU, on random
    models of two shapes, at each of ``chunk_sizes`` there (a GPU runs bigger units faster)."""
    import transformers as tf

    import gremlinkit
    from gremlinkit.zoo import registry

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    torch.set_num_threads(torch.get_num_threads() if cuda else 2)
    sizes = ", ".join(map(str, chunk_sizes))
    print(f"units of {sizes} interventions, horizon {UNIT['horizon']}, on-policy, on {device}"
          + ("" if cuda else f" ({torch.get_num_threads()} threads)"))
    costs = {}
    try:
        where = registry.require("smollm2-135m")
    except GremlinkitError:  # not built here (e.g. on a GPU machine the weights did not travel to)
        where = None
        print("  smollm2-135m is not built here: its shape stands in for it below")
    if where is not None:  # on the CPU one unit of each size, no warm-up: a unit takes minutes there
        for dtype in ([torch.bfloat16] if cuda else [torch.bfloat16, torch.float32]):
            subject = gremlinkit.load("smollm2-135m", device=device, dtype=dtype)
            costs[f"smollm2-135m {dtype}"] = min(unit_cost(subject, "smollm2-135m", *((3, 1) if cuda else (1, 0)),
                                                           chunk_size=n) for n in chunk_sizes)
            del subject
    if cuda:  # smollm2-135m's config and tokenizer, with or without its weights
        tok = tf.AutoTokenizer.from_pretrained(registry.path("smollm2-135m"))
        small = tf.AutoConfig.from_pretrained(registry.path("smollm2-135m"))
        big = tf.Gemma2Config(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                              num_attention_heads=8, num_key_value_heads=4, head_dim=256, pad_token_id=0)
        for key, config, d_sae, label in (("smollm2-135m shape", small, 4096, "smollm2-135m shape, 4,096-feature SAE"),
                                          ("2B shape", big, 16384, "2B shape (Gemma 2 2B), 16,384-feature SAE")):
            subject = random_subject(config, d_sae, device, torch.bfloat16, tok)
            costs[key] = min(unit_cost(subject, label, *((3, 1) if n <= 256 else (1, 1)), chunk_size=n)
                             for n in chunk_sizes)
            del subject
            torch.cuda.empty_cache()
    return costs


def projection(costs: dict[str, float], speedup: float | None) -> None:
    """Part 3: a full census's time on N workers, from the cost of an intervention (at the best
    unit size measured)."""
    print("projected census time (interventions x cost of one / workers; one worker per GPU, units independent)")
    big = costs.get("2B shape")
    small = costs.get("smollm2-135m shape") or next((v for k, v in costs.items() if k.startswith("smollm2")), None)
    for (name, feats, prompts, models), cost in zip(PROJECTED, (small, big)):
        if cost is None:
            continue
        n = feats * prompts * models
        hours = [n * cost / w / 3600 for w in (1, 8, 64)]
        print(f"  {name}: {n:,} interventions x {cost * 1000:.2f} ms: " +
              ", ".join(f"{w} worker{'s' if w > 1 else ''} {h:,.1f} h" for w, h in zip((1, 8, 64), hours)))
    if speedup is not None:
        print(f"  (measured scaling, 2 workers over 1 on 2 CPU cores: {speedup:.2f}x)")


def main(part: str = "all", chunk_sizes: tuple[int, ...] | None = None) -> None:
    chunk_sizes = chunk_sizes or ((256, 2048) if torch.cuda.is_available() else (64,))
    speedup = backends()["speedup"] if part in ("backends", "all") else None
    if part in ("units", "all"):
        projection(units(chunk_sizes), speedup)
    print(f"peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=["backends", "units", "all"], default="all")
    p.add_argument("--chunk-sizes", type=int, nargs="+", help="unit sizes timed (default: 256 and 2048 on a GPU, "
                   "64 on the CPU)")
    args = p.parse_args()
    main(args.part, tuple(args.chunk_sizes or ()))
