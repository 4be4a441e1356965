"""examples/bottleneck.py at its smoke budget: both forms at every b, summary, plot, and a rerun that
recomputes nothing."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_bottleneck_runs_both_forms(tmp_path, shared_data):
    env = dict(os.environ, DFA_ASYNC_DATA=str(shared_data))
    cmd = [sys.executable, str(ROOT / "examples" / "bottleneck.py"), "--budget", "smoke", "--out", str(tmp_path)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    md = (tmp_path / "summary.md").read_text()
    for form in ("elements", "narrow"):
        for b in (1, 8, 64):
            assert f"| {form} | {b} | 1 |" in md
    assert (tmp_path / "bottleneck.png").stat().st_size > 0
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and again.stdout.count(": cached") == 6
