"""Run notebooks headless with papermill and check their recorded metrics against references.

A notebook names its config class in its metadata (``metadata.gremlinkit.config``, as
``"module:Class"``). The harness checks parameters against that class *before* papermill runs
(papermill itself only warns), starts from the class's ``smoke()`` preset when asked, and reads
the ``metrics.json`` the notebook writes into its ``output_dir``.
"""

from __future__ import annotations

import dataclasses
import html
import importlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from gremlinkit.params import from_params
from gremlinkit.results import METRICS_FILE

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "tests" / "references"


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
    papermill.execute_notebook(
        str(notebook), str(executed), parameters=parameters, kernel_name="python3",
        cwd=str(notebook.parent), progress_bar=False, log_output=False,
    )
    metrics = json.loads((output_dir / METRICS_FILE).read_text())
    return NotebookRun(notebook, executed, output_dir, metrics, time.time() - t0)


def compare(metrics: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """Every way ``metrics`` misses ``reference['metrics']`` (value +- atol, or min/max bounds)."""
    problems = []
    for name, ref in reference["metrics"].items():
        if name not in metrics:
            problems.append(f"{name}: not recorded by the notebook")
            continue
        got = metrics[name]
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


def run_series(notebook_dir: Path, runs_dir: Path, smoke: bool = False) -> Path:
    """Run every notebook with default parameters into ``runs/<timestamp>/`` and write an index."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(runs_dir).resolve() / stamp
    rows = []
    for nb in discover(notebook_dir):
        print(f"running {nb.name} ...", flush=True)
        run = run_notebook(nb, run_dir / nb.stem, smoke=smoke)
        peak = run.metrics.get("peak_rss_mb", float("nan"))
        over = "  (over the 1.5 GB Binder budget)" if peak > 1500 else ""
        print(f"  {run.seconds:.0f} s, peak RSS {peak:.0f} MB{over}", flush=True)
        rows.append(run)
    _write_index(run_dir, rows)
    latest = Path(runs_dir).resolve() / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    os.symlink(stamp, latest)
    return run_dir / "index.html"


def _write_index(run_dir: Path, runs: list[NotebookRun]) -> None:
    items, md = [], [f"# gremlinkit notebook series, {run_dir.name}", ""]
    for r in runs:
        rel = r.executed.relative_to(run_dir)
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.metrics.items())
        items.append(f"<li><a href='{html.escape(str(rel))}'>{html.escape(r.notebook.name)}</a> "
                     f"({r.seconds:.0f} s): {html.escape(metrics)}</li>")
        md.append(f"- [{r.notebook.name}]({rel}) ({r.seconds:.0f} s): {metrics}")
    (run_dir / "index.html").write_text(
        f"<html><body><h1>gremlinkit notebook series, {run_dir.name}</h1><ul>{''.join(items)}</ul></body></html>\n")
    (run_dir / "index.md").write_text("\n".join(md) + "\n")
