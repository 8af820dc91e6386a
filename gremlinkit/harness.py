"""Run notebooks headless with papermill and check their recorded metrics against references.

A notebook names its config class in its metadata (``metadata.gremlinkit.config``, as
``"module:Class"``). The harness checks parameters against that class *before* papermill runs
(papermill itself only warns), starts from the class's ``smoke()`` preset when asked, and reads
the ``metrics.json`` the notebook writes into its ``output_dir``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import nbformat

from gremlinkit.params import from_params
from gremlinkit.results import METRICS_FILE

REFERENCES = "references"  # beside the notebooks: references/<notebook stem>.json
KERNEL_LOG = "kernel.log"  # the kernel's own stderr, kept beside the executed notebook


@dataclass(frozen=True)
class NotebookRun:
    notebook: Path
    executed: Path
    output_dir: Path
    metrics: dict[str, Any]
    seconds: float


def config_class(notebook: Path) -> type:
    meta = nbformat.read(notebook, as_version=4).metadata.get("gremlinkit", {})
    if "config" not in meta:
        raise KeyError(f"{notebook} has no metadata.gremlinkit.config naming its config class")
    module, _, name = meta["config"].partition(":")
    return getattr(importlib.import_module(module), name)


def parameters_for(notebook: Path, params: dict[str, Any], smoke: bool, output_dir: Path) -> dict[str, Any]:
    """The full, checked parameter dict for one run."""
    cls = config_class(notebook)
    base = dataclasses.asdict(cls.smoke()) if smoke else {}
    merged = {**base, **params, "output_dir": str(output_dir)}
    from_params(cls, merged)  # raises ConfigError naming a bad parameter
    return merged


def run_notebook(notebook: Path, output_dir: Path, params: dict[str, Any] | None = None,
                 smoke: bool = False) -> NotebookRun:
    """Execute ``notebook`` into ``output_dir`` and return its metrics."""
    import papermill

    notebook, output_dir = Path(notebook).resolve(), Path(output_dir).resolve()
    parameters = parameters_for(notebook, params or {}, smoke, output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    executed = output_dir / notebook.name
    t0 = time.time()
    with _stderr_to(output_dir / KERNEL_LOG):
        papermill.execute_notebook(
            str(notebook), str(executed), parameters=parameters, kernel_name="python3",
            cwd=str(notebook.parent), progress_bar=False, log_output=False,
        )
    metrics = json.loads((output_dir / METRICS_FILE).read_text())
    return NotebookRun(notebook, executed, output_dir, metrics, time.time() - t0)


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Send this process's stderr (file descriptor 2, which the kernel inherits) to ``path`` for the
    duration: the kernel's start-up warnings land in the run's own log, not on the user's screen."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def reference_path(notebook: Path) -> Path:
    """Where ``notebook``'s reference lives: ``references/<stem>.json`` beside it."""
    return Path(notebook).parent / REFERENCES / f"{Path(notebook).stem}.json"


def reference(notebook: Path) -> dict[str, Any]:
    """The stored reference metrics of one run of ``notebook``: its default run, or its smoke run
    where the default run is too long for the test suite (``"parameters"`` says which)."""
    path = reference_path(notebook)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: add the notebook's reference metrics there")
    return json.loads(path.read_text())


def variants(notebook: Path) -> dict[str, dict[str, Any]]:
    """Every stored reference of ``notebook`` by name: ``"default"`` (``references/<stem>.json``)
    and one per other model (``references/<stem>.<model>.json``, whose ``"params"`` hold the
    parameters that run differs by, e.g. ``{"model": "smollm2-135m"}``)."""
    out = {"default": reference(notebook)}
    stem = Path(notebook).stem
    for path in sorted((Path(notebook).parent / REFERENCES).glob(f"{stem}.*.json")):
        out[path.name[len(stem) + 1: -len(".json")]] = json.loads(path.read_text())
    return out


def compare(metrics: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """Every way ``metrics`` misses ``reference['metrics']`` (value +- atol, min/max bounds, or a
    label that ``equals`` one exactly)."""
    problems = []
    for name, ref in reference["metrics"].items():
        if name not in metrics:
            problems.append(f"{name}: not recorded by the notebook")
            continue
        got = metrics[name]
        if "equals" in ref:
            if got != ref["equals"]:
                problems.append(f"{name}={got!r} is not {ref['equals']!r} ({ref.get('why', '')})")
            continue
        if "value" in ref and abs(got - ref["value"]) > ref["atol"]:
            problems.append(f"{name}={got:.6g} differs from the reference {ref['value']:.6g} by more than "
                            f"{ref['atol']} ({ref.get('why', '')})")
        if "max" in ref and got > ref["max"]:
            problems.append(f"{name}={got:.6g} exceeds its bound {ref['max']} ({ref.get('why', '')})")
        if "min" in ref and got < ref["min"]:
            problems.append(f"{name}={got:.6g} is below its bound {ref['min']} ({ref.get('why', '')})")
    return problems


def discover(notebook_dir: Path) -> list[Path]:
    return sorted(Path(notebook_dir).glob("[0-9][0-9]_*.ipynb"))


BINDER_BUDGET_MB = 1500  # Binder gives 2 GB; leave room for the Jupyter server


@dataclass(frozen=True)
class SeriesEntry:
    run: NotebookRun  # a run that failed has no metrics
    problems: list[str]  # empty when the notebook ran and met its reference

    @property
    def passed(self) -> bool:
        return not self.problems

    def line(self) -> str:
        peak = self.run.metrics.get("peak_rss_mb")
        rss = f"{peak:5.0f} MB" if peak is not None else "      -"
        verdict = "pass" if self.passed else f"FAIL: {self.problems[0]}"
        return f"{self.run.notebook.name:<40} {self.run.seconds:5.0f} s  {rss}  {verdict}"


def reference_is_smoke(notebook: Path) -> bool:
    """Whether ``notebook``'s reference was taken at its smoke parameters."""
    return reference(notebook)["parameters"] == "smoke"


def check_run(run: NotebookRun, smoke: bool) -> list[str]:
    """What a series run fails on: a run at the parameters its stored reference was taken at must
    meet that reference (which bounds peak RSS); any other run, only the memory budget."""
    if reference_path(run.notebook).exists() and reference_is_smoke(run.notebook) == smoke:
        return compare(run.metrics, reference(run.notebook))
    peak = run.metrics.get("peak_rss_mb", 0)
    return [f"peak_rss_mb={peak:.0f} exceeds {BINDER_BUDGET_MB}"] if peak > BINDER_BUDGET_MB else []


def run_series(notebook_dir: Path, runs_dir: Path, smoke: bool = False,
               echo=print) -> tuple[Path, list[SeriesEntry]]:
    """Run every notebook into ``runs/<timestamp>/``, one line per notebook through ``echo``, and
    write an index. A notebook that fails is reported and the series goes on."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(runs_dir).resolve() / stamp
    entries = []
    for nb in discover(notebook_dir):
        t0 = time.time()
        try:
            run = run_notebook(nb, run_dir / nb.stem, smoke=smoke)
            entry = SeriesEntry(run, check_run(run, smoke))
        except Exception as err:  # a cell raised (papermill names it), or no metrics were written
            name = getattr(err, "ename", type(err).__name__)
            value = getattr(err, "evalue", None) or (str(err).strip().splitlines() or [""])[0]
            failed = NotebookRun(nb, run_dir / nb.stem / nb.name, run_dir / nb.stem, {}, time.time() - t0)
            entry = SeriesEntry(failed, [f"{name}: {value}"])
        echo(entry.line())
        entries.append(entry)
    _write_index(run_dir, entries)
    latest = Path(runs_dir).resolve() / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    os.symlink(stamp, latest)
    return run_dir / "index.html", entries


def _write_index(run_dir: Path, entries: list[SeriesEntry]) -> None:
    """``index.html`` (each notebook rendered as HTML, with its key metrics against its reference)
    and ``index.md`` (one line per notebook, every metric)."""
    from gremlinkit import series

    pages, md = [], [f"# gremlinkit notebook series, {run_dir.name}", ""]
    for e in entries:
        r = e.run
        verdict = "pass" if e.passed else "FAIL: " + "; ".join(e.problems)
        page = series.render_html(r.executed).relative_to(run_dir).as_posix() if r.executed.exists() else None
        ref = reference(r.notebook) if reference_path(r.notebook).exists() else None
        pages.append({"name": r.notebook.name, "page": page, "seconds": r.seconds, "verdict": verdict,
                      "rows": series.metrics_table(r.metrics, ref)})
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.metrics.items())
        md.append(f"- [{r.notebook.name}]({page}) ({r.seconds:.0f} s, {verdict}): {metrics}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "index.html").write_text(series.index_html(f"gremlinkit notebook series, {run_dir.name}", pages))
    (run_dir / "index.md").write_text("\n".join(md) + "\n")
