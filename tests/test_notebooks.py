"""The papermill regression harness: every notebook runs headless and meets its stored reference.

A notebook joins by adding ``tests/references/<stem>.json``; a notebook without one fails.
"""

import ast
import dataclasses
import json
from pathlib import Path

import nbformat
import papermill
import pytest

from gremlinkit import harness
from gremlinkit.errors import ConfigError

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = harness.discover(NOTEBOOK_DIR)


def test_the_series_is_discovered():
    assert [nb.name for nb in NOTEBOOKS][:1] == ["00_zoo_tour.ipynb"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_thin_stripped_and_parameterised(notebook):
    nb = nbformat.read(notebook, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not any(c.outputs for c in code), "strip outputs before committing"
    for c in code:
        tree = ast.parse(c.source)
        assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in ast.walk(tree)), c.source
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    # The parameters cell declares exactly the config's fields, with the config's defaults.
    declared = papermill.inspect_notebook(str(notebook))
    cls = harness.config_class(notebook)
    defaults = dataclasses.asdict(cls())
    assert set(declared) == set(defaults)
    for name, p in declared.items():
        assert ast.literal_eval(p["default"]) == defaults[name], name


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_smoke_run_meets_its_reference(notebook, tmp_path):
    ref_path = harness.REFERENCE_DIR / f"{notebook.stem}.json"
    assert ref_path.exists(), f"add {ref_path} with the notebook's reference metrics"
    run = harness.run_notebook(notebook, tmp_path, smoke=True)
    problems = harness.compare(run.metrics, json.loads(ref_path.read_text()))
    assert not problems, "\n".join(problems)
    assert (tmp_path / notebook.name).exists()


def test_harness_rejects_an_unknown_parameter_before_running(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['n_promts'\]"):
        harness.run_notebook(NOTEBOOKS[0], tmp_path, {"n_promts": 2}, smoke=True)
    with pytest.raises(ConfigError, match="n_prompts='2' has type str"):
        harness.run_notebook(NOTEBOOKS[0], tmp_path, {"n_prompts": "2"}, smoke=True)
    assert not (tmp_path / NOTEBOOKS[0].name).exists()


@pytest.mark.slow
def test_plain_papermill_run_fails_on_an_unknown_parameter(tmp_path):
    """Bypassing the harness, the notebook itself refuses what papermill only warns about."""
    with pytest.raises(papermill.PapermillExecutionError, match="n_promts"):
        papermill.execute_notebook(str(NOTEBOOKS[0]), str(tmp_path / "out.ipynb"),
                                   parameters={"n_promts": 2}, kernel_name="python3", progress_bar=False)


def test_compare_reports_each_miss():
    ref = {"metrics": {"a": {"value": 1.0, "atol": 0.1}, "b": {"max": 5}, "c": {"min": 2}, "d": {"max": 1}}}
    problems = harness.compare({"a": 1.2, "b": 6, "c": 2}, ref)
    assert len(problems) == 3
    assert problems[0].startswith("a=1.2 differs") and "b=6 exceeds" in problems[1] and "d: not recorded" in problems[2]
    assert harness.compare({"a": 1.05, "b": 5, "c": 3, "d": 0}, ref) == []


BINDER_BUDGET_MB = 1500  # Binder gives 2 GB; leave room for the Jupyter server


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_default_run_fits_in_binder_memory(notebook, tmp_path):
    run = harness.run_notebook(notebook, tmp_path, smoke=False)
    print(f"{notebook.name}: default run {run.seconds:.0f} s, peak RSS {run.metrics['peak_rss_mb']:.0f} MB")
    assert run.metrics["peak_rss_mb"] <= BINDER_BUDGET_MB
