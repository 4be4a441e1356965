"""The benchmark program runs every mode side by side and writes its JSON and Markdown (no timing
assertions: speed is reported, not tested)."""
import json

import pytest

from dfa_async import bench


def test_bench_writes_one_record_per_mode(tmp_path):
    records = bench.run(width=64, batch=8, threads=1, stages=2, depths=[2], warmup=1, steps=3, out=tmp_path,
                        repeats=2)
    assert [r["mode"] for r in records] == ["pytorch-backprop", "reference-dfa", "ceiling-independent-stages",
                                               "ray-2stages-D2"]
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["records"] == records and saved["meta"]["width"] == 64
    assert all(r["samples_per_s"] > 0 for r in records)
    assert records[1]["vs_reference_dfa"] == 1.0
    assert len(records[3]["busy_fraction"]) == 2 and len(records[3]["rounds"]) == 2
    assert records[3]["samples_per_s"] == pytest.approx(max(records[3]["rounds"]), abs=0.01)
    assert "| ray-2stages-D2 |" in (tmp_path / "bench.md").read_text()


def test_bench_rejects_a_width_that_is_not_a_square():
    with pytest.raises(ValueError, match="--width"):
        bench.bench_config(1000, 8, 1, 2)
