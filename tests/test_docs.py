"""The documentation: its examples run as written, the site builds strictly, and it reads in a browser.

The examples are the ``python`` blocks of the home page and of "Getting started" (run together), and
those of the exploration and findings pages (run together, in the site's order). The one hub
example, ``gremlinkit.load("gpt2", sae=("gpt2-small-res-jb", "blocks.8.hook_resid_pre"))``, runs
against an offline stand-in of the hub: a Hugging Face cache holding a small random GPT-2 (9 layers,
width 768, a byte-level BPE tokenizer that adds no BOS, as GPT-2's does) under ``gpt2``, and a
sae_lens SAE under the release's own repository and folder, with ``HF_HUB_OFFLINE=1``. So the real
loading code (nnsight's ``TransformersModel("gpt2")``, sae_lens's ``SAE.from_pretrained``) runs
unchanged; only the weights are stand-ins.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sae_lens import SAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformers import AutoModelForCausalLM, GPT2Config, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
REVISION = "0" * 40
SAE_REPO = "jbloom/GPT2-Small-SAEs-Reformatted"  # where sae_lens's release table points gpt2-small-res-jb


def _snapshot(cache: Path, repo: str) -> Path:
    """The snapshot folder of ``repo`` in a Hugging Face cache, with ``main`` pointing at it."""
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(REVISION)
    return base / "snapshots" / REVISION


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, gpt2_like):
    cache = tmp_path_factory.mktemp("hf-hub")
    tok = PreTrainedTokenizerFast.from_pretrained(gpt2_like[0])
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_layer=9, n_head=12, n_embd=768, n_inner=256, n_positions=128,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model_dir = _snapshot(cache, "gpt2")
    AutoModelForCausalLM.from_config(cfg).eval().save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    sae = SAE.from_dict(StandardSAEConfig(d_in=768, d_sae=1024, metadata=SAEMetadata(
        model_name="gpt2-small", hook_name="blocks.8.hook_resid_pre", prepend_bos=True)).to_dict())
    sae.save_model(_snapshot(cache, SAE_REPO) / "blocks.8.hook_resid_pre")
    return cache


DOCS = ROOT / "docs"
GETTING_STARTED = ["index.md", "getting-started.md"]
EXPERIMENTS = ["exploration.md", "findings/personas.md", "findings/signflip.md", "findings/persistence.md"]


def python_blocks(pages: list[str]) -> list[str]:
    """The ``python`` code blocks of ``pages`` (paths under docs/), in order."""
    return [b for page in pages for b in re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)]


def test_the_getting_started_examples_run_as_written(hub_cache, tmp_path):
    blocks = python_blocks(GETTING_STARTED)
    assert len(blocks) >= 2 and any('gremlinkit.load("gpt2"' in b for b in blocks)
    checks = """
assert gpt2.prepends_bos and gpt2.sae_site == "blocks.8.hook_resid_pre" and gpt2.d_model == 768
assert gpt2.batch(["hello"]).input_ids[0, 0] == gpt2.tokenizer.bos_token_id
assert gpt2.features(["The old sailor looked at the sea."]).shape[-1] == 1024
assert smol.dtype == torch.bfloat16 and smol.prepends_bos
assert lasting.shape == (24,) and float(lasting[0]) > 0  # the home page's edit raised its feature
print("DOCS OK")
"""
    script = tmp_path / "getting_started.py"
    script.write_text("\n".join(blocks) + checks)
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "DOCS OK" in out.stdout
    assert "following the SAE" in out.stderr  # the gpt2 tokenizer/SAE BOS conflict is named


def test_the_experiment_and_widget_examples_run_as_written(tmp_path):
    """The exploration and findings pages' ``python`` blocks, in order, in one fresh interpreter
    (experiments write their outputs under the working directory, here a scratch one)."""
    blocks = python_blocks(EXPERIMENTS)
    assert len(blocks) >= 4
    checks = """
assert set(res.calls.columns) >= {"condition", "call"} and len(res.calls) == 5  # the sign-flip result
assert set(result.summary.columns) >= {"half_life", "persistent"} and len(result.summary) == 16  # 8 features x 2 modes
assert result.metrics == ps.metrics(result.summary)
assert cfg.features == "top-8" and len(s.texts("steered")) > 0
print("DOCS OK")
"""
    script = tmp_path / "experiments.py"
    script.write_text("\n".join(blocks) + checks)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "DOCS OK" in out.stdout


# The site: `make docs` builds it with `mkdocs build --strict`; these tests build it the same way.
NOTEBOOK_PAGES = sorted((DOCS / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The documentation site, built by mkdocs with --strict (a broken link or reference fails it)."""
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_the_readme_is_a_front_door_whose_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150, "the README is a front door: 150 lines at most"
    example = re.findall(r"```python\n(.*?)```", text, re.S)
    assert example and all(b in python_blocks(["index.md"]) for b in example), "the example is the home page's"
    links = [u for u in re.findall(r"\]\(([^)\s]+)\)", text) if not u.startswith(("http://", "https://"))]
    assert len(links) >= 10
    missing = [u for u in links if not (ROOT / u.split("#")[0]).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_every_notebook_has_an_executed_page_in_step_with_its_source():
    """docs/notebooks holds an executed copy of every notebook (`make docs-notebooks`), with outputs
    and charts, whose code is the committed notebook's own (apart from papermill's injected cell)."""
    import nbformat

    sources = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert [p.name for p in NOTEBOOK_PAGES] == [p.name for p in sources]
    for page, source in zip(NOTEBOOK_PAGES, sources):
        executed, stripped = nbformat.read(page, 4), nbformat.read(source, 4)
        code = [c.source for c in executed.cells
                if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]
        assert code == [c.source for c in stripped.cells if c.cell_type == "code"], f"{page.name} is stale"
        outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
        assert all(c.execution_count for c in executed.cells if c.cell_type == "code"), f"{page.name} is not executed"
        assert not [o for o in outputs if o.output_type == "error"], f"{page.name} holds an error"
        charts = [o for o in outputs if "image/svg+xml" in o.get("data", {}) or "image/png" in o.get("data", {})]
        assert charts, f"{page.name} shows no chart"


def _internal_links(site: Path) -> list[tuple[Path, str]]:
    """(page, href) for every link and resource a built page points at inside the site."""
    links = []
    for page in site.rglob("*.html"):
        if page.name == "404.html":  # served for any missing path, so its links are absolute from the site's root
            continue
        for href in re.findall(r'(?:href|src)="([^"]+)"', page.read_text()):
            if not href.startswith(("http://", "https://", "mailto:", "data:", "javascript:", "//")):
                links.append((page, href))
    return links


@pytest.mark.slow
def test_no_internal_link_of_the_site_is_broken(site):
    links = _internal_links(site)
    assert len(links) > 500
    broken = []
    for page, href in links:
        path, _, anchor = href.partition("#")
        target = (page.parent / path).resolve() if path else page
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            broken.append(f"{page.relative_to(site)} -> {href}")
        elif anchor and target.suffix == ".html" and f'id="{anchor}"' not in target.read_text():
            broken.append(f"{page.relative_to(site)} -> {href} (no such anchor)")
    assert not broken, broken[:20]


@pytest.mark.slow
def test_the_zoo_page_is_written_from_the_cards(site):
    """Each shipped artefact's row carries its card's headline figures, as `gremlinkit.zoo.cards` reads them."""
    from gremlinkit.zoo import cards

    page = (site / "zoo" / "index.html").read_text()
    card = cards.headline(cards.card("toy-rl"))
    row = re.search(r"<tr>\s*<td><code>toy-rl</code></td>(.*?)</tr>", page, re.S).group(1)
    assert f"reward {card['reward']:g}" in row and f"kl_to_base {card['kl_to_base']:g}" in row


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_site_in_a_browser(site):
    """The built site, served on loopback, in Debian's chromium: a notebook page shows its charts,
    the API page lists ``load`` with its signature, and the search box finds "half-life"."""
    import functools
    import http.server
    import threading

    from test_browser import browser_page, screenshots

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    shots = screenshots("docs")
    try:
        with browser_page(1300) as page:
            page.goto(f"{url}/notebooks/03_persistence_scan/")
            chart = page.locator(".jp-OutputArea-output img, .jp-OutputArea-output svg").first
            chart.scroll_into_view_if_needed()
            box = chart.bounding_box()
            assert box and box["width"] > 200 and box["height"] > 100, "a chart is drawn on the notebook page"
            page.screenshot(path=str(shots / "notebook-03.png"))

            page.goto(f"{url}/api/")
            signature = page.locator("#gremlinkit\\.load").locator("xpath=following-sibling::*[1]")
            text = page.locator("#gremlinkit\\.load").inner_text() + signature.inner_text()
            assert "load" in text and "name_or_path" in text, text[:500]

            page.goto(f"{url}/")
            page.locator("label.md-search__icon, .md-search__input").first.click()
            page.keyboard.type("half-life", delay=50)  # keystrokes, as a reader types
            result = page.locator(".md-search-result__item").first
            result.wait_for(timeout=30_000)
            assert "half-life" in page.locator(".md-search-result").inner_text().lower()
            page.screenshot(path=str(shots / "search.png"))
    finally:
        server.shutdown()
