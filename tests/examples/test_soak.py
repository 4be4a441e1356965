"""examples/soak.py runs end to end (briefly) and reports bounded queues."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A soak at length is opt-in (`.ci/run` runs it): the bound on steps in flight is the schedule's
# (tests/test_schedule.py) and the stages report it every window (tests/test_metrics.py).
pytestmark = pytest.mark.slow


def test_soak_runs_and_keeps_in_flight_steps_within_the_depth(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "examples" / "soak.py"), "--steps", "400", "--slow-steps", "60",
                        "--every", "0.25", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    md = (tmp_path / "soak.md").read_text()
    assert "| steady | 400 |" in md and "| slow-stage | 60 |" in md
    assert md.count("| 3 (3) |") == 2  # the most steps in flight never exceeded D = 3
    assert (tmp_path / "soak.png").stat().st_size > 0
    header = (tmp_path / "soak.csv").read_text().splitlines()[0]
    assert header.startswith("run,t,driver_mib,stage0_mib") and "store_mib" in header
