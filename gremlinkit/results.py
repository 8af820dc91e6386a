"""Writing results so that nothing is lost: atomic files, and the metrics a notebook records."""

from __future__ import annotations

import json
import os
import resource
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

METRICS_FILE = "metrics.json"


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
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_metrics(output_dir: str | Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """Record a notebook's key metrics, plus its peak RSS, as ``output_dir/metrics.json``."""
    out = {k: (float(v) if hasattr(v, "__float__") and not isinstance(v, (bool, int)) else v)
           for k, v in metrics.items()}
    out["peak_rss_mb"] = peak_rss_mb()
    atomic_write_text(Path(output_dir) / METRICS_FILE, json.dumps(out, indent=2, sort_keys=True) + "\n")
    return out
