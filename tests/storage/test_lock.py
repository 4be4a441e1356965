"""One writer per run directory: a second `train` on it is refused with the holder's pid and host; the
lock dies with its holder, however it dies."""
import os
import signal
import socket
import subprocess
import sys
import pwd
import time
from pathlib import Path

import pytest

from dfa_async import runlog, train
from dfa_async.config import ConfigError
from dfa_async.storage.lock import RunLock

from conftest import as_nobody, small_config

LONG = ["--set", "data.name=synthetic", "--set", "data.n_train=20000", "--set", "train.batch_size=8",
        "--set", "train.epochs=1", "--set", "runtime.backend=local", "--set", "model.widths=[32,32]",
        "--set", "data.n_test=128", "--set", "checkpoint.every=50", "--no-progress"]


def test_a_lock_file_of_another_user_is_one_line_naming_the_owner(tmp_path, monkeypatch):
    """A run directory another user's run made: its .lock cannot be opened for writing."""
    lock = tmp_path / ".lock"
    lock.write_text("{}")
    lock.chmod(0)
    tmp_path.chmod(0o755)  # the directory open to all (pytest makes it 700): only the file refuses
    monkeypatch.chdir(tmp_path)
    said = as_nobody(lambda: RunLock(Path("."), "R"))
    assert said == (f"ConfigError: --run-dir R: cannot open its .lock for writing (Permission denied; it belongs to "
                    f"user {pwd.getpwuid(lock.stat().st_uid).pw_name}); run as that user or choose another directory")
    lock.chmod(0o600)
    assert lock.read_text() == "{}"  # nothing it held was touched


def test_a_second_lock_is_refused_and_a_released_one_is_free(tmp_path):
    first = RunLock(tmp_path, "R")
    with pytest.raises(ConfigError, match=rf"--run-dir R: in use by another run \(pid {os.getpid()} on host "
                                          rf"{socket.gethostname()}"):
        RunLock(tmp_path, "R")
    first.release()
    RunLock(tmp_path, "R").release()


def test_a_second_writer_is_refused_while_the_first_runs_and_resumes_after_it_is_killed(tmp_path):
    run = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "dfa_async.cli", "train", *LONG, "--run-dir", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        log = run / "events.msgpack"
        deadline = time.time() + 120
        while time.time() < deadline and not (log.exists() and runlog.read(log, "checkpoint")):
            time.sleep(0.05)
        assert proc.poll() is None, "the first run ended before the second could try"
        cfg = small_config()
        with pytest.raises(ConfigError, match=rf"in use by another run \(pid {proc.pid} on host"):
            train(cfg, run)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert len(runlog.read(log, "config")) == 1  # the refused start wrote nothing
    # kill -9 left no stale lock: the same command resumes.
    done = subprocess.run([sys.executable, "-m", "dfa_async.cli", "train", *LONG, "--run-dir", str(run)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert runlog.read(run / "events.msgpack", "resume")
