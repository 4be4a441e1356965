"""examples/grid.py: the paper's cells submitted as Ray jobs to a real head on loopback (the `paper`
budget's way), their results read back from the shared run directories, and a second invocation that
submits nothing."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ray_head_process

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
import grid  # noqa: E402


@pytest.fixture
def head():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "token")
        yield from ray_head_process(tempfile.mkdtemp(prefix="rh", dir="/tmp"), cpus=4)


def test_cells_run_as_ray_jobs_and_are_never_submitted_twice(head, tmp_path, shared_data):
    from ray.job_submission import JobStatus, JobSubmissionClient

    _, dashboard = head
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"DFA_ASYNC_DATA": str(shared_data)}
    runs = tmp_path / "shared"  # what every node of a real cluster would mount
    cmd = [sys.executable, str(ROOT / "examples" / "bottleneck.py"), "--budget", "smoke", "--seeds", "1",
           "--out", str(tmp_path / "out"), "--runs", str(runs), "--submit", dashboard, "--python", sys.executable,
           "--jobs", "3", "--set", "train.log_every=5"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert first.stdout.count(": done") == 6
    client = JobSubmissionClient(dashboard)
    jobs = client.list_jobs()
    assert len(jobs) == 6 and all(j.status == JobStatus.SUCCEEDED for j in jobs)
    assert {j.metadata["dfa_run"] for j in jobs} == {str(p) for p in runs.iterdir()}
    # each job trained in its own run directory, with the --set setting on top of the cell's own
    for job in jobs:
        config = (Path(job.metadata["dfa_run"]) / "config.toml").read_text()
        assert "log_every = 5" in config and 'form = "' in config
    assert "| elements | 1 | 1 |" in (tmp_path / "out" / "summary.md").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and again.stdout.count(": cached") == 6
    assert len(client.list_jobs()) == 6


def test_settings_for_every_cell_are_checked(capsys):
    with pytest.raises(SystemExit):
        grid.arguments("doc", {"smoke": None}, "out", ["--set", "lr=1"])
    assert "--set: 'lr=1'; use SECTION.KEY=VALUE" in capsys.readouterr().err
    args = grid.arguments("doc", {"smoke": None}, "out", ["--set", "runtime.device=cuda", "--runs", "memory://g"])
    assert args.runs == "memory://g"
    assert grid.command("x.py", args) == "python examples/x.py --budget smoke --set runtime.device=cuda --out out"


def test_a_finished_cell_is_recognised_at_a_uri(tmp_path):
    from dfa_async import train
    from conftest import small_config

    assert not grid.finished("memory://grid-test/r") and grid.outcome("memory://grid-test/r") is None
    train(small_config(), "memory://grid-test/r")
    assert grid.finished("memory://grid-test/r")
    got = grid.outcome("memory://grid-test/r")
    assert 0 <= got["test_error"] <= 100
