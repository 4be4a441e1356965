"""A driver killed with kill -9 leaves none of its private Ray instance's processes behind; while it ran,
that instance's workers ran at the driver's priority."""
import os
import signal
import subprocess
import sys
import time

from dfa_async import runlog
from dfa_async.runtime import reaper

RUN = ["--set", "data.name=synthetic", "--set", "data.n_train=20000", "--set", "train.batch_size=8",
       "--set", "model.widths=[16,16]", "--set", "runtime.backend=ray", "--no-progress"]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def alive(procs):
    return [pid for pid, start in procs if reaper._same(pid, start)]


def test_a_killed_driver_leaves_no_ray_process_behind(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "dfa_async.cli", "train", *RUN, "--run-dir", str(tmp_path / "r")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "r" / "events.msgpack"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and runlog.read(log, "train")):
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed"
    procs = reaper.descendants(proc.pid)  # Ray's head processes, the stage actors, the watcher
    assert len(procs) >= 5
    # Ray starts workers at nice 15; a private instance's run at the driver's priority (cluster.start_local)
    workers = [p for p, _ in procs if _cmdline(p).startswith("ray::")]
    assert workers and {os.getpriority(os.PRIO_PROCESS, p) for p in workers} == {os.nice(0)}
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.time() + 60
    while time.time() < deadline and alive(procs):
        time.sleep(0.2)
    left = alive(procs)
    assert not left, [open(f"/proc/{p}/cmdline").read().replace("\0", " ")[:120] for p in left]


def test_reap_never_touches_a_reused_pid():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ((pid, start),) = [(p, s) for p, s in reaper.descendants(os.getpid()) if p == sleeper.pid]
        reaper.reap([(pid, start + 1)], grace_s=0.2)  # another process's start time: left alone
        assert sleeper.poll() is None
        reaper.reap([(pid, start)], grace_s=5)
        assert sleeper.wait(timeout=10) == -signal.SIGTERM
    finally:
        sleeper.kill()
