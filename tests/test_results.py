"""Result files are written atomically, and peak RSS is the process's own."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

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


def test_writers_create_missing_folders_and_convert_numpy_scalars(tmp_path):
    deep = tmp_path / "a" / "b"
    out = results.write_metrics(deep, {"auroc": np.float32(0.75), "layer": np.int64(2), "ok": True, "n": 4})
    on_disk = json.loads((deep / results.METRICS_FILE).read_text())
    assert on_disk == out and type(on_disk["auroc"]) is float and on_disk["auroc"] == 0.75
    assert on_disk["layer"] == 2 and on_disk["ok"] is True and on_disk["n"] == 4
    # One key per line, sorted: a metrics file reads (and diffs) line by line.
    lines = (deep / results.METRICS_FILE).read_text().splitlines()
    assert lines[0] == "{" and lines[1].strip().startswith('"auroc"') and len(lines) == len(out) + 2
    results.write_table(pd.DataFrame({"a": [1]}), tmp_path / "c" / "d" / "t.parquet")
    results.atomic_write_text(tmp_path / "e" / "f" / "x.txt", "hello")
    assert (tmp_path / "e" / "f" / "x.txt").read_text() == "hello"
    for folder in (deep, tmp_path / "c" / "d", tmp_path / "e" / "f"):  # no temporary files left beside them
        assert all(not p.name.startswith(".") for p in folder.iterdir())


def test_an_atomic_write_that_fails_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "x.txt"
    results.atomic_write_text(target, "old")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        results.atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_to_numpy_detaches_and_widens_half_precision():
    t = torch.tensor([1.5, 2.25], dtype=torch.bfloat16, requires_grad=True)
    a = results.to_numpy(t * 2)
    assert a.dtype == np.float32 and a.tolist() == [3.0, 4.5]
    assert results.to_numpy(torch.tensor([3, 4])).dtype == np.int64


def test_a_table_is_written_without_its_index():
    """Tables are tidy: a filtered frame's row labels are not data, so they are not written."""
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}).iloc[[2, 0]]
    with tempfile.TemporaryDirectory() as d:
        results.write_table(df, Path(d) / "t.parquet")
        back = pd.read_parquet(Path(d) / "t.parquet")
    assert list(back.columns) == ["a", "b"] and back.index.tolist() == [0, 1] and back.a.tolist() == [3, 1]


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs a second filesystem (/dev/shm)")
def test_atomic_text_writes_stay_on_the_targets_filesystem(tmp_path, monkeypatch):
    """The temporary file is made beside its target, so the final rename never crosses
    filesystems, wherever the system's temporary directory is."""
    monkeypatch.setattr(tempfile, "tempdir", "/dev/shm")  # another filesystem than tmp_path's
    results.atomic_write_text(tmp_path / "m.json", "{}\n")
    assert (tmp_path / "m.json").read_text() == "{}\n" and not list(tmp_path.glob(".m.json-*"))


def test_peak_rss_is_linuxs_high_water_mark_in_mb():
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("no /proc here")
    before = results.peak_rss_mb()
    kb = int(next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:")).split()[1])
    assert before == kb / 1024 or results.peak_rss_mb() == kb / 1024  # the same reading, in MiB (1024 kB)


def test_a_result_writes_each_table_and_its_metrics(tmp_path):
    from dataclasses import dataclass, field

    @dataclass
    class Example(results.Result):
        rows: pd.DataFrame
        summary: pd.DataFrame
        note: str = ""
        metrics: dict = field(default_factory=dict)

    res = Example(pd.DataFrame({"lag": [0, 1], "delta": [1.0, 0.5]}), pd.DataFrame({"half_life": [1.0]}), "x",
                  {"half_life": 1.0, "persistent": 0})
    assert list(res.tables()) == ["rows", "summary"]  # the DataFrame fields, nothing else
    res.write(tmp_path)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "rows.parquet"), res.rows)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "summary.parquet"), res.summary)
    written = json.loads((tmp_path / results.METRICS_FILE).read_text())
    assert written["half_life"] == 1.0 and written["persistent"] == 0 and written["peak_rss_mb"] > 0
