"""Writing results so that nothing is lost: atomic files, and the metrics a notebook records.

`Result` is the contract every experiment's ``run(cfg, ...)`` keeps: a dataclass whose DataFrame
fields are its tidy tables and whose ``metrics`` field is one flat dict.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # torch is not imported here: reading metrics stays light
    import torch

METRICS_FILE = "metrics.json"


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor for a table: detached, on the CPU, floating types as float32 (numpy has no bfloat16)."""
    t = t.detach().cpu()
    return (t.float() if t.is_floating_point() else t).numpy()


def own_feature_rows(scan: pd.DataFrame) -> pd.DataFrame:
    """Rows of a persistence scan that measure the edited feature itself (a ``record_all`` scan also
    measures every other feature, in its ``measured`` column)."""
    return scan[scan.measured == scan.feature] if "measured" in scan else scan


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_table(df: pd.DataFrame, path: Path) -> None:
    """Write a DataFrame to parquet atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB.

    On Linux this is ``VmHWM``, which belongs to the process's own address space. ``ru_maxrss``
    is the fallback elsewhere; Linux carries it over from the parent across fork and exec, so a
    kernel started by a large process would report the parent's peak.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_metrics(output_dir: str | Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """Record a notebook's key metrics, plus its peak RSS, as ``output_dir/metrics.json``."""
    out = {k: (float(v) if hasattr(v, "__float__") and not isinstance(v, (bool, int)) else v)
           for k, v in metrics.items()}
    out["peak_rss_mb"] = peak_rss_mb()
    atomic_write_text(Path(output_dir) / METRICS_FILE, json.dumps(out, indent=2, sort_keys=True) + "\n")
    return out


class Result:
    """Base of every experiment's result dataclass: its DataFrame fields are tidy tables, and its
    ``metrics`` field holds the flat figures a notebook records (filled by the experiment's ``run``)."""

    metrics: dict[str, Any]

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every tidy table by field name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), pd.DataFrame)}

    def write(self, output_dir: str | Path) -> dict[str, Any]:
        """Each table as ``output_dir/<name>.parquet`` and the metrics as ``metrics.json``, atomically."""
        for name, table in self.tables().items():
            write_table(table, Path(output_dir) / f"{name}.parquet")
        return write_metrics(output_dir, self.metrics)
