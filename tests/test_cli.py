"""The `dfa-async` command as a user runs it."""
import subprocess
import sys

import pytest
import torch

from dfa_async import runlog

SYNTH = ["--set", "data.name=synthetic", "--set", "model.widths=[16]", "--set", "train.epochs=1",
         "--set", "runtime.backend=local", "--set", "data.n_train=256"]


def dfa_async(*args, cwd):
    return subprocess.run([sys.executable, "-m", "dfa_async.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_train_prints_a_summary_and_writes_the_run(tmp_path):
    p = dfa_async("train", *SYNTH, "--run-dir", "out", "--no-progress", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    line = p.stdout.strip().splitlines()[-1]
    assert line.startswith("test_accuracy=") and "run_dir=out" in line
    acc = float(line.split()[0].split("=")[1])
    assert runlog.read(tmp_path / "out" / "events.msgpack", "eval")[-1]["test_accuracy"] == pytest.approx(acc, abs=5e-5)
    torch.load(tmp_path / "out" / "final_model.pt", weights_only=True)


def test_config_file_with_override(tmp_path):
    (tmp_path / "c.toml").write_text('[data]\nname = "synthetic"\nn_train = 64\n[model]\nwidths = [8]\n'
                                     '[train]\nepochs = 1\nbatch_size = 16\nname = "mine"\n[runtime]\nbackend = "local"\n')
    p = dfa_async("train", "c.toml", "--set", "train.batch_size=32", "--no-progress", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    saved = (tmp_path / "runs" / "mine" / "config.toml").read_text()
    assert "batch_size = 32" in saved


def test_bad_setting_is_one_line_and_nothing_is_written(tmp_path):
    p = dfa_async("train", "--set", "model.activation=swish", cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0
    assert "model.activation" in p.stderr and "tanh, relu, leaky_relu, sigmoid" in p.stderr
    assert not (tmp_path / "runs").exists()


def test_missing_data_is_one_line(tmp_path):
    p = dfa_async("train", "--set", f"data.dir={tmp_path}", "--set", "data.download=false", cwd=tmp_path)
    assert p.returncode == 2 and "missing" in p.stderr and p.stderr.strip().count("\n") == 0


def test_settings_lists_every_key(tmp_path):
    p = dfa_async("settings", cwd=tmp_path)
    assert p.returncode == 0 and "runtime.depth = 1" in p.stdout and "feedback.error_scale" in p.stdout


def test_killed_driver_resumes_from_its_run_dir_to_the_same_weights(tmp_path):
    """SIGKILL the whole `dfa-async train` process after a checkpoint, run the same command again:
    it resumes, and the final weights equal those of a run straight through."""
    import os
    import signal
    import time

    args = [*SYNTH, "--set", "data.n_train=16000", "--set", "train.batch_size=8", "--set", "checkpoint.every=100",
            "--set", "runtime.depth=2", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "dfa_async.cli", "train", *args, "--run-dir", "cut"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "cut" / "events.msgpack"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and any(r["kind"] == "checkpoint" for r in runlog.read(log)):
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)  # poll interval of the log; the kill waits for the checkpoint record itself
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "cut" / "final_model.pt").exists()
    resumed = dfa_async("train", *args, "--run-dir", "cut", cwd=tmp_path)
    straight = dfa_async("train", *args, "--run-dir", "straight", cwd=tmp_path)
    assert resumed.returncode == 0 and straight.returncode == 0, resumed.stderr + straight.stderr
    a = torch.load(tmp_path / "cut" / "final_model.pt", weights_only=True)
    b = torch.load(tmp_path / "straight" / "final_model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    kinds = [r["kind"] for r in runlog.read(log)]
    assert "resume" in kinds and kinds[-1] == "done"
