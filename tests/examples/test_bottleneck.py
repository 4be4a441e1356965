"""examples/bottleneck.py at its smoke budget, every cell submitted as a Ray job to a real head on
loopback (the `paper` budget's way; tests/examples/test_best_practices.py runs cells as local
processes): both forms at every b, summary and plot read back from the shared run directories, and a
second invocation that submits nothing."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ray_head_process

ROOT = Path(__file__).resolve().parents[2]

# Opt-in (`.ci/run` runs it): the grid runner is exercised by test_best_practices.py and a job submission
# by tests/runtime/test_jobs.py; this runs six cells as Ray jobs on a head of their own.
pytestmark = pytest.mark.slow


@pytest.fixture
def head():
    yield from ray_head_process(tempfile.mkdtemp(prefix="rh", dir="/tmp"), cpus=4)


def test_smoke_bottleneck_as_ray_jobs_never_submitted_twice(head, tmp_path, shared_data):
    from ray.job_submission import JobStatus, JobSubmissionClient

    _, dashboard = head
    # a relative data folder (as .ci/run sets it) must reach the jobs, which run in a copy of the repo
    data = os.path.relpath(shared_data, tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"DFA_ASYNC_DATA": data}
    runs = tmp_path / "shared"  # what every node of a real cluster would mount
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "examples" / "bottleneck.py"), "--budget", "smoke", "--out", str(out),
           "--runs", str(runs), "--submit", dashboard, "--python", sys.executable, "--jobs", "3",
           "--set", "train.log_every=5"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert first.stdout.count(": done") == 6
    client = JobSubmissionClient(dashboard)
    jobs = client.list_jobs()
    assert len(jobs) == 6 and all(j.status == JobStatus.SUCCEEDED for j in jobs)
    assert {j.metadata["dfa_run"] for j in jobs} == {str(p) for p in runs.iterdir()}
    for job in jobs:  # each job trained in its own run directory, the --set setting on top of the cell's
        config = (Path(job.metadata["dfa_run"]) / "config.toml").read_text()
        assert "log_every = 5" in config and 'form = "' in config
    md = (out / "summary.md").read_text()
    for form in ("elements", "narrow"):
        for b in (1, 8, 64):
            assert f"| {form} | {b} | 1 |" in md
    assert (out / "bottleneck.png").stat().st_size > 0
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count(": cached") == 6
    assert len(client.list_jobs()) == 6
