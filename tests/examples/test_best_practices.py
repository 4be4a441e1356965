"""examples/best_practices.py at its smoke budget: every cell runs as its own process (two at once), the
summary holds each, and a second invocation recomputes nothing."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_grid_runs_every_cell_once(tmp_path, shared_data):
    env = dict(os.environ, DFA_ASYNC_DATA=str(shared_data))
    cmd = [sys.executable, str(ROOT / "examples" / "best_practices.py"), "--budget", "smoke", "--out", str(tmp_path), "--jobs", "2"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    # baseline x {dfa-async, dfa-sync, bp} + normalization off x {dfa-async, dfa-sync}: backprop never
    # reads the feedback normalization, so that row has no bp cell of its own
    assert first.stdout.count(": done") == 5
    md = (tmp_path / "summary.md").read_text()
    for row in ("| mnist-fc | baseline | - | dfa-async | 1 |", "| mnist-fc | normalization | off | dfa-sync | 1 |",
                "| mnist-fc | baseline | - | bp | 1 |"):
        assert row in md
    assert "| mnist-fc | normalization | off | bp |" not in md
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 6
    assert (tmp_path / "alignment-mnist-fc-dfa-async.png").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and again.stdout.count(": cached") == 5
