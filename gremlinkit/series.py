"""The notebook series as pages a person reads: the demo's plan, its rendered index, the site's copies.

``make demo`` prints its plan first (`plan`: each notebook with its expected time, from the last
measured figures stored in its reference's ``"seconds"``), runs the series (`harness.run_series`),
and ends on ``index.html``: one link per notebook rendered as HTML with its charts
(`render_html`, nbconvert's lab template) and a short table of its key metrics against its
reference. ``make docs-notebooks`` copies the executed notebooks into ``docs/notebooks/``
(`copy_to_docs`), where the site renders them.
"""

from __future__ import annotations

import html
import warnings
from pathlib import Path
from typing import Any

import nbformat

from gremlinkit.results import atomic_write_text

KEY_METRICS = 6  # metrics per notebook in the index's table


def expected_seconds(notebook: Path, smoke: bool) -> float | None:
    """The last measured time of ``notebook``'s default (or smoke) run, from its reference."""
    from gremlinkit.harness import reference, reference_path

    if not reference_path(notebook).exists():
        return None
    return reference(notebook).get("seconds", {}).get("smoke" if smoke else "default")


def plan(notebooks: list[Path], smoke: bool) -> list[str]:
    """One line per notebook with its expected time, and the total."""
    lines, total = [], 0.0
    for nb in notebooks:
        s = expected_seconds(nb, smoke)
        total += s or 0
        lines.append(f"  {nb.name:<40} {f'~{s:.0f} s' if s else 'time not measured'}")
    kind = "smoke" if smoke else "default"
    return [f"The notebook series, {kind} parameters, about {total / 60:.0f} min:", *lines]


def render_html(executed: Path) -> Path:
    """``executed`` rendered beside it as HTML, outputs and charts included (nbconvert, lab template)."""
    from nbconvert import HTMLExporter

    with warnings.catch_warnings():  # papermill keeps the source's cells, which predate cell ids
        warnings.simplefilter("ignore", nbformat.validator.MissingIDFieldWarning)
        body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(executed, as_version=4))
    out = executed.with_suffix(".html")
    atomic_write_text(out, body)
    return out


def metrics_table(metrics: dict[str, Any], reference: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    """(metric, value, reference) for the first ``KEY_METRICS`` metrics its reference checks."""
    rows = []
    for name, ref in list((reference or {}).get("metrics", {}).items())[:KEY_METRICS]:
        got = metrics.get(name)
        want = ref.get("equals", ref.get("value"))
        bound = (f"{want:.4g} ± {ref['atol']:g}" if "atol" in ref else f"{want}") if want is not None else \
            " ".join(f"{k} {ref[k]:g}" for k in ("min", "max") if k in ref)
        rows.append((name, "-" if got is None else f"{got:.4g}" if isinstance(got, float) else str(got), bound))
    return rows


def index_html(title: str, entries: list[dict]) -> str:
    """The demo's index: per notebook, a link to its rendered page, its time and verdict, and its
    key metrics against the reference."""
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for e in entries:
        name = html.escape(e["name"])
        heading = f"<a href='{html.escape(e['page'])}'>{name}</a>" if e.get("page") else name
        parts.append(f"<h2>{heading}</h2><p>{e['seconds']:.0f} s, {html.escape(e['verdict'])}</p>")
        if e["rows"]:
            cells = "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>"
                            for a, b, c in e["rows"])
            parts.append(f"<table><tr><th>metric</th><th>this run</th><th>reference</th></tr>{cells}</table>")
    return "\n".join(parts) + "\n</body></html>\n"


def copy_to_docs(executed: list[Path], docs_dir: Path, run_root: Path) -> list[Path]:
    """Copy executed notebooks into ``docs_dir`` for the site, with the run's absolute paths in
    papermill's injected cell written relative to the folder that holds ``run_root``."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for path in executed:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if "injected-parameters" in cell.metadata.get("tags", []):
                cell.source = cell.source.replace(str(run_root.resolve().parent) + "/", "")
        nb.metadata.pop("papermill", None)
        _widgets_as_static_outputs(nb)
        target = docs_dir / path.name
        atomic_write_text(target, nbformat.writes(nb).rstrip("\n") + "\n")  # as nbformat.write ends it
        out.append(target)
    return out


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def _widgets_as_static_outputs(nb) -> None:
    """After each widget's output, the outputs its saved state holds (its ``Output`` children's
    charts and text), so that a page read without a kernel or the widgets' JavaScript shows them."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})

    def held(model_id: str, seen: set) -> list:
        if model_id in seen or model_id not in state:
            return []
        seen.add(model_id)
        model = state[model_id]
        if model["model_name"] == "OutputModel":
            return list(model["state"].get("outputs", []))
        refs = [c for c in model["state"].get("children", []) if isinstance(c, str)]
        return [o for ref in refs for o in held(ref.removeprefix("IPY_MODEL_"), seen)]

    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        out = []
        for o in cell.outputs:
            out.append(o)
            view = o.get("data", {}).get(WIDGET_VIEW)
            if view:
                out += [nbformat.from_dict(s) for s in held(view["model_id"], set())]
        cell.outputs = out
