"""examples/device_check.sh runs green with the CPU standing in for the GPU (tiny sizes), so that the
script a GPU session runs does not rot."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_device_check_runs_with_the_cpu_standing_in(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "QUICK": "1", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "examples/device_check.sh", str(tmp_path / "out")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "device check passed" in proc.stdout
    assert "2 passed" in (tmp_path / "out" / "equivalence.txt").read_text()
    cpu = json.loads((tmp_path / "out" / "cpu" / "bench.json").read_text())
    assert {r["workers"] for r in cpu["records"]} == {1, 2} and any(r["mode"] == "ddp" for r in cpu["records"])
    for share, n in (("share2", 2), ("share4", 4)):
        rec = json.loads((tmp_path / "out" / share / "bench.json").read_text())
        assert rec["meta"]["stages"] == [n] and rec["meta"]["device"] == "cpu"
        assert any(r["mode"] == "dataplane-D3" for r in rec["records"])
