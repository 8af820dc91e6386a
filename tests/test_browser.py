"""Notebook 05 in a real browser: JupyterLab on loopback, driven by Playwright in Debian's chromium.

The notebook is opened on the real model, smollm2-135m in bf16 with the English world, at the
parameters of its smoke reference (``references/05_explore.smollm2-135m.json``), injected by
papermill as a user's parameters would be; the zoo's widgets are driven in ``test_widgets.py`` and
run headless in ``test_notebooks.py``. The test opens the notebook as a person would, runs all cells
from the Run menu, checks that the three widgets render and that an altair chart is drawn, drags the
steering slider and checks that the steered text changes. Screenshots go to ``test-output/browser/`` (or ``$GREMLINKIT_TEST_OUTPUT``).

It installs Debian's ``chromium`` if it is missing (Playwright's own browser download cannot work
offline) and is skipped, with the reason, only when that install fails.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from conftest import install_debian_package

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "05_explore.ipynb"
VARIANT = "smollm2-135m"  # the stored reference whose parameters the page runs with
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Where JupyterLab shows a cell's exception (progress bars also write to stderr, so match "Traceback").
ERROR_OUTPUTS = (".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error'], "
                 ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
# JupyterLab settings for a quiet, reproducible page: no news or update prompts.
LAB_SETTINGS = {"@jupyterlab/apputils-extension/notification.jupyterlab-settings":
                '{"fetchNews": "false", "checkForUpdates": false}'}


def chromium() -> str:
    """Path of Debian's chromium, installing the package if needed; skip only if that fails."""
    found = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if found:
        return found
    install_debian_package("chromium")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed chromium, but no chromium executable is on PATH")
    return found


def screenshots(name: str) -> Path:
    """Where a browser test saves its screenshots: ``test-output/<name>/`` (or ``$GREMLINKIT_TEST_OUTPUT``)."""
    shots = Path(os.environ.get("GREMLINKIT_TEST_OUTPUT", ROOT / "test-output")) / name
    shots.mkdir(parents=True, exist_ok=True)
    return shots


@contextlib.contextmanager
def browser_page(width: int) -> Iterator:
    """A page in headless Debian chromium (installed if missing); fails the test if the page raised."""
    exe = chromium()
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": width, "height": 1000})
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page
        browser.close()
    assert not errors, f"page errors: {errors}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """JupyterLab serving a copy of notebook 05 on loopback; yields (url, token)."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from gremlinkit import harness

    (tmp_path / "notebooks").mkdir()
    source = ROOT / "notebooks" / NOTEBOOK
    ref = harness.variants(source)[VARIANT]
    params = harness.parameters_for(source, ref["params"], ref["parameters"] == "smoke", tmp_path / "output")
    nb = parameterize_notebook(load_notebook_node(str(source)), params)
    nbformat.write(nb, tmp_path / "notebooks" / NOTEBOOK)
    settings = tmp_path / "lab-settings"
    for name, text in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    port, token = _free_port(), "gremlinkit-browser-test"
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws")}
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"JupyterLab did not start: {(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield url, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _wait_for_all_cells(page, timeout_s: float) -> None:
    """Until every code cell has run (no '[*]' prompt, the last shows a count) or one has raised."""
    page.wait_for_function(
        """(errors) => {
            const raised = [...document.querySelectorAll(errors)].some(o => o.textContent.includes('Traceback'));
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
                .map(p => p.textContent.trim());
            return raised || (prompts.length > 0 && !prompts.some(p => p.includes('*'))
                && /\\[\\d+\\]/.test(prompts[prompts.length - 1]));
        }""",
        arg=ERROR_OUTPUTS, timeout=timeout_s * 1000)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_notebook_05_in_jupyterlab(lab):
    url, token = lab
    shots = screenshots("browser")
    with browser_page(1400) as page:
        page.goto(f"{url}/lab/tree/notebooks/{NOTEBOOK}?token={token}")
        page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-CodeCell", timeout=120_000)
        # The status bar reads "Python 3 (ipykernel) | Idle" once the kernel has started.
        page.locator(".jp-StatusBar-Widget", has_text="| Idle").first.wait_for(timeout=120_000)
        page.screenshot(path=str(shots / "01-opened.png"))

        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        _wait_for_all_cells(page, timeout_s=600)
        raised = page.locator(ERROR_OUTPUTS).filter(has_text="Traceback")
        assert raised.count() == 0, f"a cell raised: {raised.first.inner_text()[:2000]}"

        # The three widgets render.
        for css in (".gk-feature-explorer", ".gk-steering", ".gk-scan-viewer"):
            page.locator(css).first.scroll_into_view_if_needed()
            assert page.locator(css).first.is_visible(), f"{css} did not render"

        # An altair chart is drawn: the explorer's heatmap, an SVG made by vega, decoded by the browser.
        chart = page.locator(".gk-feature-charts img").first
        chart.scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 100", arg=chart.element_handle(),
                               timeout=30_000)
        src = chart.get_attribute("src")
        assert src.startswith("data:image/svg+xml")
        svg = base64.b64decode(src.split(",", 1)[1]).decode() if ";base64," in src else src
        assert "mark-rect" in svg and "mark-text" in svg, "the heatmap's cells and tokens are drawn"
        page.locator(".gk-feature-explorer").first.screenshot(path=str(shots / "02-feature-explorer.png"))

        # Moving the slider changes the generated text.
        steering = page.locator(".gk-steering").first
        steering.scroll_into_view_if_needed()
        steered = steering.locator(".gk-steered")
        before = steered.inner_text()
        steering.screenshot(path=str(shots / "03-steering-before.png"))
        handle = steering.locator(".noUi-handle").first
        box = handle.bounding_box()
        track = steering.locator(".noUi-target").first.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(track["x"] + track["width"] * 0.9, box["y"] + box["height"] / 2, steps=12)
        page.mouse.up()
        page.wait_for_function("([el, old]) => el.innerText !== old", arg=[steered.element_handle(), before],
                               timeout=60_000)
        after = steered.inner_text()
        assert after != before
        readout = steering.locator(".widget-readout").first.inner_text()
        assert float(readout) > 3.0, f"the slider moved right (readout {readout})"
        steering.screenshot(path=str(shots / "04-steering-after.png"))

        viewer = page.locator(".gk-scan-viewer").first
        viewer.scroll_into_view_if_needed()
        viewer.screenshot(path=str(shots / "05-scan-viewer.png"))
