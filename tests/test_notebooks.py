"""The papermill regression harness: every notebook runs headless and meets its stored reference.

A notebook joins by adding ``notebooks/references/<stem>.json``; a notebook without one fails.
"""

import ast
import dataclasses
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


REFERENCE_RUNS = [(nb, name) for nb in NOTEBOOKS for name in harness.variants(nb)]


@pytest.mark.slow
@pytest.mark.parametrize("notebook, variant", REFERENCE_RUNS,
                         ids=lambda v: v.stem if isinstance(v, Path) else v)
def test_reference_run_meets_its_reference_within_binder_memory(notebook, variant, tmp_path):
    """One kernel per notebook and reference: its default run, as `make demo` runs it (or its smoke
    run, where the reference says so: notebook 04's default run takes minutes), on the zoo and on
    each other model it has a reference for (``references/<stem>.<model>.json``), against the
    stored figures, which bound peak RSS by the 1.5 GB Binder budget."""
    reference = harness.variants(notebook)[variant]
    assert reference["parameters"] in ("default", "smoke")
    assert reference["metrics"]["peak_rss_mb"]["max"] <= harness.BINDER_BUDGET_MB
    smoke = reference["parameters"] == "smoke"
    run = harness.run_notebook(notebook, tmp_path, reference.get("params", {}), smoke=smoke)
    print(f"{notebook.name} [{variant}]: {reference['parameters']} run {run.seconds:.0f} s, "
          f"peak RSS {run.metrics['peak_rss_mb']:.0f} MB")
    problems = harness.compare(run.metrics, reference)
    assert not problems, "\n".join(problems)
    assert (tmp_path / notebook.name).exists()
    assert "Traceback" not in (tmp_path / harness.KERNEL_LOG).read_text()


def _tiny_notebook(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["gremlinkit"] = {"config": "gremlinkit.experiments.zoo_tour:ZooTourConfig"}
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('output_dir = "out"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


@pytest.mark.slow
def test_demo_prints_one_line_per_notebook_and_goes_on_after_a_failure(tmp_path, capfd):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _tiny_notebook(notebooks / "00_ok.ipynb", "import json, pathlib\n"
                   "pathlib.Path(output_dir, 'metrics.json').write_text(json.dumps({'peak_rss_mb': 123.0}))")
    _tiny_notebook(notebooks / "01_broken.ipynb", "raise ValueError('planted failure')")
    _tiny_notebook(notebooks / "02_heavy.ipynb", "import json, pathlib\n"
                   "pathlib.Path(output_dir, 'metrics.json').write_text(json.dumps({'peak_rss_mb': 1600.0}))")
    lines = []
    index, entries = harness.run_series(notebooks, tmp_path / "runs", smoke=True, echo=lines.append)
    out, err = capfd.readouterr()
    assert [e.passed for e in entries] == [True, False, False]
    assert lines[0].startswith("00_ok.ipynb") and "123 MB" in lines[0] and lines[0].endswith("pass")
    assert "FAIL: ValueError: planted failure" in lines[1] and "FAIL: peak_rss_mb=1600 exceeds 1500" in lines[2]
    assert "without encryption" not in out + err  # the kernel's start-up chatter goes to its own log
    assert "without encryption" in (tmp_path / "runs" / "latest" / "00_ok" / harness.KERNEL_LOG).read_text()
    assert index.exists() and "planted failure" in (index.parent / "index.md").read_text()
    page = index.read_text()  # each notebook rendered as HTML, linked from the index
    assert "href='00_ok/00_ok.html'" in page and "<svg" not in page
    assert "print" in (index.parent / "00_ok" / "00_ok.html").read_text()  # its code, as a page


def test_the_demo_plan_gives_each_notebook_its_last_measured_time():
    from gremlinkit import series

    lines = series.plan(NOTEBOOKS, smoke=False)
    seconds = {nb.name: harness.reference(nb)["seconds"]["default"] for nb in NOTEBOOKS}
    assert len(lines) == 1 + len(seconds)
    for name, s in seconds.items():
        assert any(line.split()[0] == name and line.split()[1] == f"~{s:.0f}" for line in lines[1:]), name
    assert f"about {sum(seconds.values()) / 60:.0f} min" in lines[0]


def test_the_demo_index_table_reads_metrics_against_their_reference():
    from gremlinkit import series

    ref = {"metrics": {"a": {"value": 0.5, "atol": 0.1}, "b": {"max": 1500}, "c": {"equals": "x"}}}
    rows = series.metrics_table({"a": 0.52, "b": 900.0}, ref)
    assert rows == [("a", "0.52", "0.5 ± 0.1"), ("b", "900", "max 1500"), ("c", "-", "x")]


# A world of one trait and no generation prompts (the `one_trait_world` fixture): what each notebook
# that takes a world must run on, saying what it skipped. Beside the smoke preset, only what the
# fixture's tiny model needs: its own SAE, and no family to compare it with. The cells of notebooks 02,
# 03 and 04 are their run, pure plots and a print, so they run in process (test_signflip,
# test_persistence, test_gremlins).
ONE_TRAIT = {"05_explore": ({"scan_models": []}, "skipped: the world's generation prompts: the kind world has none")}


@pytest.mark.slow
@pytest.mark.parametrize("stem", ONE_TRAIT)
def test_each_notebook_that_takes_a_world_runs_on_one_trait_without_prompts(stem, one_trait_world, tmp_path):
    model, world, sae = one_trait_world
    extra, said = ONE_TRAIT[stem]
    run = harness.run_notebook(NOTEBOOK_DIR / f"{stem}.ipynb", tmp_path,
                               {"model": str(model), "world": str(world), "sae": str(sae), **extra}, smoke=True)
    assert "Traceback" not in (tmp_path / harness.KERNEL_LOG).read_text()
    printed = "".join(o.get("text", "") for c in nbformat.read(run.executed, as_version=4).cells
                      for o in c.get("outputs", []))
    assert said is None or said in printed
    assert run.metrics["peak_rss_mb"] > 0 and len(run.metrics) > 2  # it wrote its metrics
