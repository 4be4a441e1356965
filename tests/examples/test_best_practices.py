"""examples/best_practices.py at its smoke budget: every cell runs as its own process (two at once), the
summary holds each, and a second invocation recomputes nothing."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # 35 s: six training processes, twice
def test_smoke_grid_runs_every_cell_once(tmp_path, shared_data):
    env = dict(os.environ, DFA_ASYNC_DATA=str(shared_data))
    cmd = [sys.executable, str(ROOT / "examples" / "best_practices.py"), "--budget", "smoke", "--out", str(tmp_path), "--jobs", "2"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    # baseline x {dfa-async, dfa-sync, bp} + normalization off x {dfa-async, dfa-sync}: backprop never
    # reads the feedback normalization, so that row has no bp cell of its own
    assert first.stdout.count(": done") == 5
    assert "smoke budget: a plumbing check" in first.stdout  # near-chance accuracies, said to be expected
    md = (tmp_path / "summary.md").read_text()
    for row in ("| mnist-fc | baseline | - | dfa-async | 1 |", "| mnist-fc | normalization | off | dfa-sync | 1 |",
                "| mnist-fc | baseline | - | bp | 1 |"):
        assert row in md
    assert "| mnist-fc | normalization | off | bp |" not in md
    assert "| mnist-fc | baseline | - | 1 |" in md.split("## Asynchronous")[1]
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert {"align0", "pre0", "zero3"} <= set(header)
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 6
    assert (tmp_path / "alignment-mnist-fc-dfa-async.png").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and again.stdout.count(": cached") == 5


def test_summary_pairs_async_with_sync_by_seed(tmp_path):
    sys.path.insert(0, str(ROOT / "examples"))
    import best_practices as bp

    def row(rule, seed, err, align0):
        return {"net": "mnist-fc", "row": "baseline", "value": "-", "rule": rule, "seed": seed, "test_error": err,
                "align0": align0, "pre0": align0, "zero0": 0.0, "align1": 1.0, "pre1": 1.0, "zero1": 0.25,
                "alignment": []}

    # seed 2 has no sync partner: it must not enter the pairs
    rows = [row("dfa-sync", 0, 2.0, 0.5), row("dfa-sync", 1, 3.0, 0.5), row("dfa-async", 0, 2.5, 0.4),
            row("dfa-async", 1, 4.5, 0.3), row("dfa-async", 2, 9.0, 0.1)]
    text = bp.summarize(rows, tmp_path, "cmd")
    # async - sync: 0.5 and 1.5 points -> 1.00 ± 0.71; align 0: -0.1 and -0.2 -> -0.15 ± 0.07
    assert "| mnist-fc | baseline | - | 2 | 2.50 ± 0.71 | 3.50 ± 1.41 | 1.00 ± 0.71 | -0.15 ± 0.07 |" in text
    # the head's zero share in %, and the async row over all three seeds
    assert "| mnist-fc | baseline | - | dfa-async | 3 | 5.33 ± 3.33 | 0.27 ± 0.15 | 1.00 ± 0.00 | 25.00 ± 0.00 |" in text
