"""The Binder environment, built as repo2docker builds it, from the ``binder/`` files alone.

repo2docker copies the repository, picks the Python named in ``binder/runtime.txt``, runs
``pip install -r binder/requirements.txt``, then ``binder/postBuild`` from the repository root
(which installs gremlinkit with uv; the test points uv and pip at this machine's caches).
This test does the same in a fresh virtual environment (no Makefile, no .venv, a scratch HOME)
and runs notebook 00 there with its default parameters against its stored reference.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gremlinkit import harness
from gremlinkit.zoo import registry

ROOT = Path(__file__).resolve().parent.parent


def _copy_repository(dest: Path) -> None:
    """The files git tracks, as repo2docker would see a clone (no .venv, runs or outputs)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.fail(f"cannot list the repository's files with git: {listed.stderr.strip()}")
    for rel in filter(None, listed.stdout.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _lower_priority() -> None:
    os.nice(15)  # the background build takes the CPU the tests leave idle, instead of competing for it


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int, background: bool = False) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_lower_priority if background else None)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


class BinderBuild(threading.Thread):
    """repo2docker's steps (copy, venv, ``pip install -r binder/requirements.txt``, ``postBuild``),
    run in a background thread from the start of the session at a low CPU priority: they fill the
    time the other tests leave a core idle. The thread runs in the process that starts the session
    (pytest-xdist's controller when the suite runs on several workers) and ends by writing
    ``result.json`` under its root; the test below, on whichever worker, waits for that file."""

    def __init__(self, root: Path):
        super().__init__(daemon=True)
        self.root = root
        self.repo, self.venv, self.home = paths(root)

    def run(self) -> None:
        result: dict = {"error": None, "post_stdout": ""}
        try:
            self.repo.mkdir(parents=True)
            self.home.mkdir()
            _copy_repository(self.repo)
            base_python = getattr(sys, "_base_executable", sys.executable)
            subprocess.run([base_python, "-m", "venv", str(self.venv)], check=True, preexec_fn=_lower_priority)
            py = str(self.venv / "bin" / "python")
            env = build_env(self.root)
            _run([py, "-m", "pip", "install", "--quiet", "-r", "binder/requirements.txt"], self.repo, env, 900,
                 background=True)
            result["post_stdout"] = _run(["bash", "binder/postBuild"], self.repo, env, 1200, background=True).stdout
        except (AssertionError, OSError, subprocess.SubprocessError) as err:
            result["error"] = str(err)
        tmp = self.root / "result.json.tmp"
        tmp.write_text(json.dumps(result))
        tmp.replace(self.root / "result.json")


def paths(root: Path) -> tuple[Path, Path, Path]:
    """(repository copy, virtual environment, HOME) of the build under ``root``."""
    return root / "repo", root / "venv", root / "home"


def build_env(root: Path) -> dict:
    """The build's environment: the Binder venv first on PATH, a scratch HOME, pip's own cache."""
    _, venv, home = paths(root)
    cache = os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
    uv_cache = os.environ.get("UV_CACHE_DIR", str(Path.home() / ".cache" / "uv"))  # filled by `make test`'s install
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "JUPYTER", "VIRTUAL_ENV"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               HOME=str(home), PIP_CACHE_DIR=cache, UV_CACHE_DIR=uv_cache,
               # Bytecode is compiled on first import instead of at install: the same environment,
               # less work while the other tests run.
               PIP_NO_COMPILE="1",
               # An index that cannot be reached (offline CI) is skipped after one quick try.
               PIP_RETRIES="0", PIP_TIMEOUT="10")
    return env


def start_build(root: Path) -> BinderBuild:
    build = BinderBuild(root)
    build.start()
    return build


def wait_for(root: Path, timeout: float) -> dict:
    """The build's result, once ``result.json`` appears under ``root``."""
    deadline = time.monotonic() + timeout
    while not (root / "result.json").exists():
        if time.monotonic() > deadline:
            pytest.fail(f"the Binder environment build under {root} did not finish in {timeout:.0f} s")
        time.sleep(2)
    return json.loads((root / "result.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_binder_environment_runs_notebook_00(tmp_path, binder_build):
    runtime = (ROOT / "binder" / "runtime.txt").read_text().strip()
    assert runtime == f"python-{sys.version_info.major}.{sys.version_info.minor}", \
        f"binder/runtime.txt asks for {runtime}; this test runs Python {sys.version.split()[0]}"
    build = wait_for(binder_build, timeout=2100)
    assert build["error"] is None, build["error"]
    repo, venv, home = paths(binder_build)
    env = build_env(binder_build)
    py = str(venv / "bin" / "python")
    shipped = [a for a in registry.ARTEFACTS.values() if not a.cached]  # every toy artefact and the real SAE
    assert f"zoo ok: {len(shipped)} shipped artefacts" in build["post_stdout"]
    config = home / ".jupyter" / "jupyter_server_config.py"
    assert "/lab/tree/notebooks/00_zoo_tour.ipynb" in config.read_text()

    # The environment is the Binder one: torch pinned and CPU-only, gremlinkit from the copy.
    probe = _run([py, "-c", "import json, torch, gremlinkit; print(json.dumps([torch.__version__, "
                  "torch.cuda.is_available(), gremlinkit.__file__]))"], repo, env, 120)
    version, cuda, location = json.loads(probe.stdout)
    assert version.split("+")[0] == "2.13.0" and not cuda
    assert Path(location).is_relative_to(repo)

    out = tmp_path / "out"
    _run([str(venv / "bin" / "gremlinkit"), "run", "notebooks/00_zoo_tour.ipynb", str(out)], repo, env, 900)
    metrics = json.loads((out / "metrics.json").read_text())
    assert harness.compare(metrics, harness.reference(ROOT / "notebooks" / "00_zoo_tour.ipynb")) == []
