"""examples/device_check.sh runs green with the CPU standing in for the GPU (tiny sizes), so that the
script a GPU session runs does not rot."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every step it runs has its own test; this one keeps the script from rotting
ROOT = Path(__file__).resolve().parents[2]


def test_device_check_runs_with_the_cpu_standing_in(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "QUICK": "1", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "examples/device_check.sh", str(tmp_path / "out")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "device check passed" in proc.stdout
    for step in ("1. GPU tests and equivalence on cpu", "2. one hop", "3. overhead, tiny model", "4. bench, 2 stages"):
        assert f"== {step}" in proc.stdout and proc.stdout.count(": done in ") == 4
    assert "== 5, 6. benches with 4 stages sharing the cpu and with CPU stages: skipped (FULL=1" in proc.stdout
    tiny = json.loads((tmp_path / "out" / "tiny" / "bench.json").read_text())
    assert tiny["meta"]["width"] == 16 and any(r["mode"] == "dataplane-D3" for r in tiny["records"])
    equivalence = (tmp_path / "out" / "equivalence.txt").read_text()
    assert "2 passed, 7 skipped" in equivalence and "no CUDA device on this machine" in equivalence
    assert json.loads((tmp_path / "out" / "transfer" / "transfer.json").read_text()) == {"skipped": "no CUDA device"}
    rec = json.loads((tmp_path / "out" / "share2" / "bench.json").read_text())
    assert rec["meta"]["stages"] == [2] and rec["meta"]["device"] == "cpu"
    assert any(r["mode"] == "dataplane-D3" for r in rec["records"])


def test_a_step_cut_at_its_budget_is_reported_and_the_next_ones_still_run(tmp_path):
    # Budgets of a fraction of a second: no step can finish (each starts Python, torch and Ray).
    env = {**os.environ, "DEVICE": "cpu", "QUICK": "1", "PYTHON": sys.executable,
           "BUDGET_EQ": "0.2", "BUDGET_HOP": "0.2", "BUDGET_TINY": "0.2", "BUDGET_SHARE": "0.2"}
    proc = subprocess.run(["bash", "examples/device_check.sh", str(tmp_path / "out")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("cut at its budget") == 4  # steps 5 and 6 run only with FULL=1
    assert "device check FAILED: 1. GPU tests and equivalence on cpu 2. one hop" in proc.stdout
    assert "4. bench, 2 stages sharing the cpu; results so far in" in proc.stdout
    assert "device check passed" not in proc.stdout
