"""Real Ray clusters: a head started with `ray start --head` on 127.0.0.1 (free ports, its own temp dir,
stopped by pid, never `ray stop`); a run joins it by address, a run without an address is not captured
by it, and the README's job command goes through the Ray Jobs SDK and leaves its results on durable
storage."""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from dfa_async import runlog, train
from dfa_async.config import ConfigError
from dfa_async.rundir import in_ray_job_copy

from conftest import free_port, ray_head_process, small_config

@pytest.fixture(scope="module")
def ray_head():
    """A 3-CPU head on loopback with its own temp dir; yields (GCS address, dashboard URL)."""
    yield from ray_head_process(tempfile.mkdtemp(prefix="rh", dir="/tmp"), cpus=3)  # short: socket paths < 108 bytes


@pytest.fixture
def default_head():
    """A 1-CPU head in Ray's default temp dir, as `ray start --head` run by a user leaves it: it records
    itself in /tmp/ray/ray_current_cluster, where a plain ray.init() finds it. The record is removed
    afterwards if this fixture made it."""
    record = Path("/tmp/ray/ray_current_cluster")
    before = record.read_bytes() if record.exists() else None
    try:
        yield from ray_head_process(None, cpus=1)
    finally:
        if before is None:
            record.unlink(missing_ok=True)
        else:
            record.write_bytes(before)


def run_cli(*args, env_extra=None, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | (env_extra or {})
    return subprocess.run([sys.executable, "-m", "dfa_async.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


SMALL = ["--set", "data.name=synthetic", "--set", "data.n_train=256", "--set", "data.n_test=64",
         "--set", "model.widths=[16,16]", "--set", "train.epochs=1", "--set", "train.batch_size=16", "--no-progress"]


def test_a_run_joins_a_cluster_by_address(ray_head, tmp_path):
    gcs, _ = ray_head
    proc = run_cli("train", *SMALL, "--set", f"runtime.address={gcs}", "--run-dir", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"joined the Ray cluster at {gcs} (3 CPUs" in proc.stdout
    assert (tmp_path / "r" / "final_model.pt").exists()


def test_a_run_without_address_starts_its_own_instance_beside_a_running_cluster(default_head, tmp_path):
    """Before: `ValueError: When connecting to an existing cluster, num_cpus and num_gpus must not be
    provided` (a plain ray.init() joined the user's head)."""
    proc = run_cli("train", *SMALL, "--run-dir", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "joined the Ray cluster" not in proc.stdout and "test_accuracy=" in proc.stdout


def test_the_readme_job_command_through_the_jobs_sdk(ray_head, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    _, dashboard = ray_head
    root = tmp_path / "shared-runs"  # durable storage: outside the job's working-dir copy
    client = JobSubmissionClient(dashboard)
    entry = " ".join([sys.executable, "-m", "dfa_async.cli", "train", *SMALL, "--set", f"train.root={root}",
                      "--set", "train.name=job"])
    wd = tmp_path / "wd"  # what `ray job submit --working-dir .` uploads
    wd.mkdir()
    (wd / "note.txt").write_text("working dir of the job\n")
    deadline = time.time() + 120
    while True:  # the head's job agent comes up a little after its dashboard answers
        try:
            job = client.submit_job(entrypoint=entry, runtime_env={"working_dir": str(wd)})
            break
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.time() > deadline:
                raise
            time.sleep(1)
    deadline = time.time() + 300
    while client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.time() < deadline
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs[-3000:]
    assert "joined the Ray cluster" in logs  # the job's driver joins the cluster it runs in ($RAY_ADDRESS)
    done = runlog.read(root / "job" / "events.msgpack", "done")
    assert done and 0 <= done[-1]["test_accuracy"] <= 1
    assert torch.load(root / "job" / "final_model.pt", weights_only=True)


def test_a_relative_root_inside_a_job_copy_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    assert in_ray_job_copy(Path("runs")) and not in_ray_job_copy(tmp_path)
    with pytest.raises(ConfigError, match="train.root: 'runs' is inside the copy of the working dir"):
        train(small_config(), None)


def test_an_address_where_nothing_answers_fails_at_once(tmp_path):
    t0 = time.time()
    # --run-dir: a start refused this late has made its run directory, which must not land in the checkout
    proc = run_cli("train", *SMALL, "--set", f"runtime.address=127.0.0.1:{free_port()}", "--run-dir",
                   str(tmp_path / "r"))
    assert proc.returncode == 2 and "runtime.address: nothing answers at 127.0.0.1:" in proc.stderr
    assert proc.stderr.count("\n") == 1 and time.time() - t0 < 60


def test_a_private_instance_too_small_for_the_stages_fails_at_once(tmp_path):
    t0 = time.time()
    with pytest.raises(ConfigError, match=r"runtime.blocks_per_stage: 3 stages need \{'CPU': 3\}, but the cluster has "
                                          r"\{'CPU': 1.0\} in all; raise runtime.num_cpus"):
        train(small_config(runtime={"backend": "ray", "num_cpus": 1}), tmp_path / "r")
    assert time.time() - t0 < 60
