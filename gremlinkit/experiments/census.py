"""The gremlin census as a command: notebook 04's experiment, run by ``gremlinkit census`` or by
`run`, in this process or spread over Ray workers, and resumable.

A census is one persistence scan per feature, model and prompt (`gremlinkit.experiments.gremlins`
holds the experiment, its controls and its decision rule). Its config is notebook 04's,
`gremlins.GremlinConfig` (here `CensusConfig`): the same fields are the notebook's papermill
parameters and the command's flags. ``backend="ray"`` runs the scans' units on ``workers`` Ray
actors (`gremlinkit.workers`); the tables are the same, bit for bit, at the same ``threads``.

Into ``output_dir`` go what notebook 04 writes (``census.csv``, ``metrics.json``, ``summary``,
``counts``, ``planted`` and ``rl_dose`` as parquet), every unit of every scan (``scan-<hash>/``)
and ``census-config.json``: the settings that decide the rows. Run the same command again and it
resumes from the units on disk; a run into the same directory with other settings is refused
before any unit runs, naming what differs. Where and how the units run (``backend``, ``workers``,
``address``, ``threads``, ``gpus_per_worker``) may change between runs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from gremlinkit.errors import ConfigError
from gremlinkit.experiments import gremlins, persistence
from gremlinkit.results import atomic_write_text

CensusConfig = gremlins.GremlinConfig
CONFIG_FILE = "census-config.json"


def settings(cfg: CensusConfig) -> dict[str, Any]:
    """The fields that decide a census's rows: all but where it is written and where it runs."""
    skip = {"output_dir", "family", *persistence.EXECUTION_FIELDS}  # `family` fills fields that are recorded
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}


def claim(cfg: CensusConfig) -> Path:
    """Write ``census-config.json`` into ``output_dir``, or, if a census there has run units
    already, check that it has the same settings; returns the file."""
    path = Path(cfg.output_dir) / CONFIG_FILE
    now = settings(cfg)
    if path.exists() and any(Path(cfg.output_dir).glob("scan-*/*.parquet")):
        before = json.loads(path.read_text())
        differ = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        if differ:
            changes = "; ".join(f"{k}: {before.get(k)!r} on disk, {now.get(k)!r} now" for k in differ)
            raise ConfigError(f"{cfg.output_dir} holds a census run with other settings ({changes}). Rerun with "
                              "its settings to resume it, or choose another output directory")
        return path
    atomic_write_text(path, json.dumps(now, indent=2, sort_keys=True) + "\n")
    return path


def run(cfg: CensusConfig, subjects: dict | None = None) -> gremlins.GremlinResults:
    """Run (or resume) the census and write its tables and metrics into ``cfg.output_dir``."""
    gremlins.check_models(cfg)  # an unknown model fails before the directory is claimed
    claim(cfg)
    res = gremlins.run(cfg, subjects)
    gremlins.write(res, cfg.output_dir)
    return res


def from_command_line(models: list[str] | None, out: str, namespace: Any) -> CensusConfig:
    """The config of ``gremlinkit census``: ``models`` (the base first), ``out`` and every other
    field as a flag (`gremlinkit.params.add_flags`); ``--workers`` or ``--address`` without
    ``--backend`` means the Ray backend."""
    from gremlinkit.params import from_flags

    given: dict[str, Any] = {"output_dir": str(out)}
    if getattr(namespace, "backend", None) is None and (getattr(namespace, "workers", None) is not None
                                                        or getattr(namespace, "address", None) is not None):
        given["backend"] = "ray"  # --workers or --address asks for Ray workers
    if models:
        if len(set(models)) < len(models):
            raise ConfigError(f"--models {' '.join(models)} repeats a model")
        given.update(model=models[0], models=list(models[1:]))
    return from_flags(CensusConfig, namespace, **given)
