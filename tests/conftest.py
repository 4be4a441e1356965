import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# Ray 2.60 reads RAY_AUTH_MODE into a per-process config the first time it is used and trusts the variable
# afterwards without rereading: set only around a later test (a head fixture), it left this process's
# clients 'disabled' against a head that demanded a token, whenever an earlier test had touched Ray
# ("Missing authentication token", test order dependent). Token mode is what ray.init() picks by
# default anyway; every Ray use in the tests (private instances, test heads, their clients) shares it.
os.environ["RAY_AUTH_MODE"] = "token"
# The tests' token, in the environment every Ray process of theirs inherits: without one, Ray would write
# ~/.ray/auth_token, and the suite changes nothing outside the checkout.
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="session")
def shared_data():
    """A folder holding MNIST and Fashion-MNIST: $DFA_ASYNC_DATA, ../shared/data, or the user's cache
    (downloaded there, md5-verified, when missing)."""
    from dfa_async import data
    from dfa_async.config import DataConfig

    for folder in (os.environ.get("DFA_ASYNC_DATA"), ROOT.parent / "shared" / "data"):
        if folder and (Path(folder) / "mnist" / "train-images-idx3-ubyte.gz").exists():
            return Path(folder)
    folder = Path.home() / ".cache" / "dfa_async"
    for name in ("mnist", "fashion_mnist"):
        data.load(DataConfig(name=name, dir=str(folder)))
    return folder


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory):
    """One real bench of a tiny model (N blocks + head, 16 wide) over N = 1 and 2 workers, every mode, one
    round, with the simulator's calibration runs: its records and its folder, read by the bench's tests and
    the simulator's. (How rounds become records is tested as a table; the ceiling is timed over 0.2 s, not
    the bench's 2.)"""
    from dfa_async.perf import bench, modes

    out = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(modes, "CEILING_MIN_S", 0.2)
        records = bench.run(width=16, batch=8, threads=1, stages=[1, 2], depths=[2], warmup=3, steps=12, out=out,
                            repeats=1, microbatches=[2], calls=False, replicas=[1, 2])  # (the per-op calls: tests/perf/test_calls.py)
    return records, out


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def as_nobody(fn) -> str:
    """What fn() raised, as text, run by a user whom permissions bind: root passes every permission check,
    so as root fn runs in a forked child with the uid and gid of `nobody`. Give it relative paths in a
    folder open to all (the child cannot pass the test's private parents)."""
    import pwd

    if os.geteuid() != 0:
        try:
            fn()
            return "no error"
        except Exception as err:
            return f"{type(err).__name__}: {err}"
    nobody = pwd.getpwnam("nobody")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, run, report, and leave without running pytest's exit handlers
        code = 1
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            try:
                fn()
                os.write(write, b"no error")
            except Exception as err:
                os.write(write, f"{type(err).__name__}: {err}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as fh:
        said = fh.read()
    assert os.waitpid(pid, 0)[1] == 0
    return said


def small_config(**sections):
    """A fast synthetic setup: 8x8 inputs, MLP 32-32-10, local backend."""
    from dfa_async.config import from_dict

    raw = {"data": {"name": "synthetic", "n_train": 256, "n_test": 128},
           "model": {"widths": [32, 32]},
           "train": {"epochs": 1, "batch_size": 16, "log_every": 1},
           "runtime": {"backend": "local"}}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return from_dict(raw)


@pytest.fixture(scope="module")
def ray_instance():
    """A real local Ray instance of the test module's own (4 CPUs: up to 4 stage actors)."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poison(monkeypatch, sample: int, n_train: int, batch: int, steps: int) -> list[int]:
    """Make data.load put a NaN into one training sample; returns the steps whose batch holds it."""
    from dfa_async import data

    load = data.load

    def with_nan(cfg, seed, window=0):
        ds = load(cfg, seed, window)
        ds.x_train.view(len(ds.x_train), -1)[sample, 0] = float("nan")
        return ds
    monkeypatch.setattr(data, "load", with_nan)
    batches = data.Batches(n_train, batch, 0)
    return [t for t in range(steps) if sample in batches.indices(t).tolist()]


def ray_head_process(temp: str | None, cpus: int):
    """`ray start --head --block` on 127.0.0.1 (free ports, dashboard on); yields (GCS address, dashboard
    URL) once the Jobs SDK answers, then stops the head by pid (never `ray stop`). Ray 2.60 heads require
    a token: ~/.ray/auth_token, made by the head where missing."""
    import psutil
    from ray.job_submission import JobSubmissionClient

    port, dash = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
         # the agent's defaults (52365 and friends) are taken by any other Ray instance on this machine,
         # and without its HTTP server the head accepts no job ("No available agent")
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
         *([f"--temp-dir={temp}"] if temp else []), f"--num-cpus={cpus}", "--num-gpus=0",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    children = []
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                JobSubmissionClient(f"http://127.0.0.1:{dash}").list_jobs()
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        children = psutil.Process(proc.pid).children(recursive=True)
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"
    finally:
        # By pid: `ray start --block` ends the head's processes when it gets SIGTERM; never `ray stop`.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        gone, left = psutil.wait_procs(children, timeout=30)
        for p in left:  # the head's own processes only, by pid
            p.kill()
        assert not left, f"the head left {[p.pid for p in left]} running"
