"""Result files are written atomically, and peak RSS is the process's own."""

import json
import subprocess
import sys

import pandas as pd

from gremlinkit import results


def test_peak_rss_is_not_inherited_from_a_large_parent():
    hog = bytearray(600 * 2**20)  # touch 600 MB in this process
    hog[::4096] = b"x" * len(hog[::4096])
    child = subprocess.run([sys.executable, "-c", "from gremlinkit.results import peak_rss_mb; print(peak_rss_mb())"],
                           capture_output=True, text=True, check=True)
    assert results.peak_rss_mb() > 600
    assert float(child.stdout) < 300
    del hog


def test_metrics_and_tables_round_trip(tmp_path):
    out = results.write_metrics(tmp_path, {"loss": 0.5, "count": 3})
    assert json.loads((tmp_path / results.METRICS_FILE).read_text()) == out
    assert out["loss"] == 0.5 and out["count"] == 3 and out["peak_rss_mb"] > 0
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    results.write_table(df, tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), df)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "t.parquet"]  # no temp files left
