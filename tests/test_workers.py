"""Scans spread over Ray workers (`gremlinkit.workers`) and the census command (`census`): the same
table bit for bit as the local backend, with one worker, two, or a worker killed mid-run; a resume
that redoes only what is missing; and bad input refused before any unit runs."""

import dataclasses
import json
import logging
import os
import re
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from tqdm import tqdm

from gremlinkit import providers, workers
from gremlinkit.cli import parser
from gremlinkit.errors import ConfigError
from gremlinkit.experiments import census, gremlins
from gremlinkit.experiments import persistence as ps


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster, with a CPU for each worker of a one-worker and a two-worker pool."""
    import ray

    ray.init(num_cpus=3, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield
    ray.shutdown()


def _cfg(out, **kw) -> ps.PersistenceConfig:
    # 8 features x 8 prompts in 16 units of 4 interventions: long enough to kill a worker mid-run
    return ps.PersistenceConfig(**{"model": "toy-base", "features": [5, 9, 17, 40, 77, 101, 150, 200],
                                   "n_prompts": 8, "horizon": 16, "chunk_size": 4, "mode": "on_policy",
                                   "scale": 16.0, "output_dir": str(out), **kw})


def _units_on_disk(cfg) -> list:
    return sorted((Path(cfg.output_dir) / f"scan-{cfg.scan_key()}").glob("*.parquet"))


def _killed_mid_run(pool, cfg, toy) -> tuple[pd.DataFrame, int, list, list]:
    """Scan on ``pool`` while its first worker is killed (SIGKILL) once the first unit is written;
    returns the table, the units written at the kill, and the workers' pids before and after."""
    before, out = pool.pids(), {}
    run = threading.Thread(target=lambda: out.update(table=ps.scan(cfg, {"toy-base": toy}, pool)))
    run.start()
    while not _units_on_disk(cfg) and run.is_alive():
        time.sleep(0.02)
    written = len(_units_on_disk(cfg))
    os.kill(before[0], signal.SIGKILL)  # it has units in flight
    run.join()
    return out["table"], written, before, pool.pids()


@pytest.mark.slow  # one Ray cluster and three worker processes: one test, so that one pytest worker starts them
def test_ray_workers_give_the_local_table_bit_for_bit_through_a_kill_a_resume_and_a_failing_unit(toy, cluster,
                                                                                                  tmp_path):
    cfg = _cfg(tmp_path / "local")
    local = ps.scan(cfg, {"toy-base": toy}, workers.Local(threads=1))
    with workers.RayPool(workers=1, threads=1) as one_worker:
        one = ps.scan(dataclasses.replace(cfg, output_dir=str(tmp_path / "one")), {"toy-base": toy}, one_worker)
        # a unit that raises names itself, its worker and the worker's traceback
        plan = ps.plan(dataclasses.replace(cfg, features=[5], n_prompts=2, chunk_size=1), toy)
        broken = dataclasses.replace(plan, cfg=dataclasses.replace(plan.cfg, model="no-such-model"))
        with pytest.raises(workers.WorkerError) as err, tqdm(disable=True) as bar:
            one_worker.run(broken, broken.units(), bar)
    killed_cfg = dataclasses.replace(cfg, output_dir=str(tmp_path / "two"))
    with workers.RayPool(workers=2, threads=1) as two_workers:
        two, written_at_kill, before, after = _killed_mid_run(two_workers, killed_cfg, toy)
        units = _units_on_disk(killed_cfg)
        kept = {p: p.stat().st_mtime_ns for p in units[::2]}
        for p in units[1::2]:  # an interrupted run: every other unit never written
            p.unlink()
        resumed = ps.scan(killed_cfg, {"toy-base": toy}, two_workers)
    assert 0 < written_at_kill < 16, "the worker was killed mid-run"
    assert after[0] != before[0] and after[1] == before[1], "Ray restarted the killed worker alone"
    for table in (one, two, resumed):
        pd.testing.assert_frame_equal(table, local, check_exact=True)
    keys = ["feature", "prompt_id", "position", "lag"]
    assert len(local) == 8 * 8 * 17 and not two.duplicated(keys).any()  # every row once, none twice
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items()), "a resume does not redo finished units"
    assert len(_units_on_disk(killed_cfg)) == len(units) == 16
    trace = str(err.value)
    assert "unit no-such-model-on_policy-000000 failed on worker 0" in trace
    assert 'workers.py", line' in trace and "in sae_name" in trace and "\x1b[" not in trace  # the worker's frames
    assert "model 'no-such-model' has no SAE of its own" in trace


def test_the_census_command_reads_every_config_field_as_a_flag(tmp_path):
    args = parser(census=True).parse_args(
        ["census", "--models", "toy-base", "toy-rl", "--features", "live", "--dose-models", "--no-full",
         "--positions", "sentence_end:24", "12", "--workers", "3", "--backend", "ray", "--gpus-per-worker", "0.5",
         "--out", str(tmp_path)])
    cfg = census.from_command_line(args.models, args.out, args)
    assert (cfg.model, cfg.models, cfg.features, cfg.dose_models, cfg.full) == ("toy-base", ["toy-rl"], "live", [],
                                                                                 False)
    assert (cfg.positions, cfg.workers, cfg.backend, cfg.gpus_per_worker) == (["sentence_end:24", 12], 3, "ray", 0.5)
    assert cfg.output_dir == str(tmp_path) and cfg.horizon == gremlins.GremlinConfig().horizon
    ids = parser(census=True).parse_args(["census", "--features", "5", "7", "--out", "x"])
    assert census.from_command_line(None, "x", ids).features == [5, 7]
    assert census.from_command_line(None, "x", ids).backend == "local"
    two = parser(census=True).parse_args(["census", "--workers", "2", "--out", "x"])  # workers mean Ray
    assert census.from_command_line(None, "x", two).backend == "ray"


@pytest.mark.parametrize("flags, match", [
    (["--workers", "0", "--backend", "ray"], r"workers=0 is out of range: valid range is \[1, 1024\]"),
    (["--backend", "dask"], r"backend='dask' is not one of \['local', 'ray'\]"),
    (["--backend", "ray", "--address", "127.0.0.1:1"], r"address='127.0.0.1:1': no Ray cluster answers there"),
    (["--threads", "-1"], r"threads=-1 is out of range"),
    (["--scale", "big"], r"argument --scale: invalid float value: 'big'"),
])
def test_bad_census_flags_name_the_value_and_what_is_accepted(flags, match, tmp_path, capsys):
    from gremlinkit.cli import main

    try:
        code = main(["census", "--out", str(tmp_path), *flags])
    except SystemExit as e:  # argparse's own refusal of a flag's type
        code = e.code
    assert code == 2 and re.search(match, capsys.readouterr().err)
    assert not list(tmp_path.glob("*")), "nothing is written for a refused run"


def test_an_unknown_model_is_refused_before_the_run_directory_is_claimed(tmp_path):
    cfg = dataclasses.replace(gremlins.GremlinConfig.smoke(), models=["toy-sft", "toy-rlx"], output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"unknown model\(s\) 'toy-rlx': name a model of the toy family"):
        census.run(cfg)
    assert not (tmp_path / census.CONFIG_FILE).exists()


def test_a_resume_with_other_settings_is_refused_naming_them(tmp_path):
    cfg = dataclasses.replace(gremlins.GremlinConfig.smoke(), output_dir=str(tmp_path))
    census.claim(cfg)
    assert json.loads((tmp_path / census.CONFIG_FILE).read_text())["features"] == "random-3"
    census.claim(dataclasses.replace(cfg, features="random-4"))  # no unit has run: the directory is free
    (tmp_path / "scan-abc").mkdir()
    (tmp_path / "scan-abc" / "toy-base-on_policy-000000.parquet").write_bytes(b"")
    census.claim(dataclasses.replace(cfg, features="random-4", backend="ray", workers=4))  # where it runs may change
    with pytest.raises(ConfigError, match=r"features: 'random-4' on disk, 'random-5' now.*horizon: 96 on disk, 64"):
        census.claim(dataclasses.replace(cfg, features="random-5", horizon=64))


def test_a_census_on_a_world_without_topic_stories_runs_without_its_topic_controls():
    """smollm2-135m reads English, which has no topic chain: the planted organisms are the toy's, so
    the census asks for them to be turned off; its control is then the text edit, or none."""
    with pytest.raises(ConfigError, match=r"planted_seeds=5: the planted organisms are the toy family's"):
        gremlins.GremlinConfig(model="smollm2-135m", models=[], dose_models=[])
    cfg = gremlins.GremlinConfig(model="smollm2-135m", models=["smollm2-135m-rl"], dose_models=[], control_topic="",
                                 planted_seeds=0)
    family = providers.family(cfg.model)
    assert cfg.story() is None and gremlins.roles(cfg, family) == ("smollm2-135m-rl", ("smollm2-135m",))
    with pytest.raises(ConfigError, match=r"'toy-rl-20'.* not in the smollm2 family of 'smollm2-135m'"):
        gremlins.check_models(dataclasses.replace(cfg, dose_models=["toy-rl-20"]))
