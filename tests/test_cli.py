"""The `dfa-async` command as a user runs it."""
import re
import subprocess
import sys

import pytest
import torch

from dfa_async import cli, runlog

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


# -- the reliability audit's inputs: each a one-line error (exit 2) naming what to change, or success ----------
def _finished_run(tmp):
    from dfa_async import cli

    assert cli.main(["train", *SYNTH, "--run-dir", str(tmp / "done"), "--no-progress"]) == 0
    return tmp / "done"


def _other_shape_checkpoint(tmp):
    """A run dir whose checkpoint (of the unframed era, without settings) holds another model's shapes."""
    from dfa_async import checkpoint, cli

    assert cli.main(["train", *SYNTH, "--set", "model.widths=[24]", "--set", "checkpoint.every=4",
                     "--set", "train.max_steps=6", "--run-dir", str(tmp / "shape"), "--no-progress"]) == 0
    for p in (tmp / "shape" / "checkpoints").glob("step-*.pt"):
        state = checkpoint.load(p)
        del state["settings"], state["sha256"]  # (that era had neither)
        torch.save(state, p)
    (tmp / "shape" / "config.toml").unlink()
    (tmp / "shape" / "events.msgpack").unlink()
    (tmp / "shape" / "final_model.pt").unlink()
    return tmp / "shape"


AUDIT = {
    "binary config file": (lambda t: (t / "c.bin").write_bytes(b"\x00\xff\xfe\x80" * 50) and ["train", str(t / "c.bin")],
                           "not valid TOML"),
    "directory as config file": (lambda t: ["train", str(t)], "is a directory"),
    "run dir that is a file": (lambda t: (t / "f").write_text("x") and ["train", *SYNTH, "--run-dir", str(t / "f")],
                               "is a file, not a directory"),
    "run dir under a file": (lambda t: (t / "f").write_text("x") and ["train", *SYNTH, "--run-dir", str(t / "f" / "r")],
                             "lies under a file"),
    "train.root that is a file": (lambda t: (t / "f").write_text("x") and ["train", *SYNTH, "--set",
                                                                           f"train.root={t / 'f'}"], "train.root"),
    "run dir without write permission": (lambda t: ["train", *SYNTH, "--run-dir", "/sys/dfa-async-x"],
                                         "cannot write in /sys/dfa-async-x"),
    "data.dir that is a file": (lambda t: (t / "f").write_text("x") and ["train", "--set", f"data.dir={t / 'f'}"],
                                "data.dir"),
    "data.url that is not a URL": (lambda t: ["train", "--set", "data.url=notaurl"], "data.url: 'notaurl'"),
    "nccl on the local backend": (lambda t: ["train", *SYNTH, "--set", "runtime.transport=nccl"],
                                  "runtime.transport: 'nccl' applies to runtime.backend = ray"),
    "an address on the local backend": (lambda t: ["train", *SYNTH, "--set", "runtime.address=auto"],
                                        "runtime.address"),
    "a checkpoint of another model": (lambda t: ["train", *SYNTH, "--run-dir", str(_other_shape_checkpoint(t))],
                                      "does not fit this model (block 0 1.weight is 24x64 there, 16x64 in this model)"),
    "events.msgpack that is a directory": (lambda t: (t / "r" / "events.msgpack").mkdir(parents=True) or
                                           ["train", *SYNTH, "--run-dir", str(t / "r")], "events.msgpack is a directory"),
    "report --out onto a file": (lambda t: (t / "f").write_text("x") and ["report", str(_finished_run(t)), "--out",
                                                                          str(t / "f")], "is a file"),
    "report of a garbage log": (lambda t: (t / "g").mkdir() or (t / "g" / "events.msgpack").write_bytes(b"\x00" * 99)
                                and ["report", str(t / "g")], "holds no event-log records"),
    "report of a directory log": (lambda t: (t / "g" / "events.msgpack").mkdir(parents=True) or ["report", str(t / "g")],
                                  "is not a file"),
    "bench --width -4": (lambda t: ["bench", "--width", "-4"], "--width: -4"),
    "bench --steps 0": (lambda t: ["bench", "--steps", "0"], "--steps: 0"),
    "bench --depths a,b": (lambda t: ["bench", "--depths", "a,b"], "--depths: 'a,b'"),
    "bench --stages 0": (lambda t: ["bench", "--stages", "0"], "--stages: 0"),
    "bench --repeats 0": (lambda t: ["bench", "--repeats", "0"], "--repeats: 0"),
    "bench --depths 0": (lambda t: ["bench", "--depths", "0"], "--depths: 0"),
    "an unknown flag": (lambda t: ["train", "--epochs", "3"], "unrecognized arguments: --epochs"),
    "simulate of a missing folder": (lambda t: ["simulate", str(t / "none")], "none"),
    # issue 25's audit: each of these hung, lost the run, or ended in a traceback
    "train.name with a newline": (lambda t: ["train", *SYNTH, "--set", 'train.name="a\\nb"'], "train.name: 'a\\nb'"),
    "train.name outside train.root": (lambda t: ["train", *SYNTH, "--set", "train.name=../x"], "train.name: '../x'"),
    "--run-dir memory://": (lambda t: ["train", *SYNTH, "--run-dir", "memory://x"], "lives in this process only"),
    "train.root memory://": (lambda t: ["train", *SYNTH, "--set", "train.root=memory://r"], "train.root: 'memory://r'"),
    "--run-dir http://": (lambda t: ["train", *SYNTH, "--run-dir", "http://127.0.0.1:9/x"], "read-only"),
    "--run-dir relative file://": (lambda t: ["train", *SYNTH, "--run-dir", "file://relrun/sub"],
                                   "relative file:// URI"),
    "--run-dir empty": (lambda t: ["train", *SYNTH, "--run-dir", ""], "--run-dir: empty"),
    "optim.lr = inf": (lambda t: ["train", *SYNTH, "--set", "optim.lr=inf"], "optim.lr: expected a finite number"),
    "peer timeout of a nanosecond": (lambda t: ["train", *SYNTH, "--set", "runtime.peer_timeout_s=1e-9"],
                                     "runtime.peer_timeout_s: 1e-09 is out of range; it must be >= 1.0"),
    "peer timeout of forever": (lambda t: ["train", *SYNTH, "--set", "runtime.peer_timeout_s=inf"],
                                "runtime.peer_timeout_s: expected a finite number"),
    "a seed beyond 64 bits": (lambda t: ["train", *SYNTH, "--set", "train.seed=18446744073709551616"],
                              "train.seed: 18446744073709551616 is out of range"),
    "a sample count beyond 2^64": (lambda t: ["train", *SYNTH, "--set", "data.n_train=18446744073709551617"],
                           "data.n_train: 18446744073709551617 is out of range"),
    "a billion billion steps": (lambda t: ["train", *SYNTH, "--set", "train.epochs=0", "--set",
                                           "train.max_steps=1000000000000000000"], "train.max_steps: 10000"),
    "two billion evaluations": (lambda t: ["train", *SYNTH, "--set", "train.epochs=0", "--set",
                                           "train.max_steps=2000000000"], "drain the pipeline 1000000000 times"),
    "simulate a hundred million workers": (lambda t: ["simulate", str(t), "--workers", "100000000"],
                                           "--workers: 100000000"),
    "a metrics.host of another machine": (lambda t: ["train", *SYNTH, "--set", "metrics.enabled=true", "--set",
                                                    "metrics.host=192.0.2.1"],
                                          "metrics.host: '192.0.2.1' is not an address of this machine"),
    "a directory where a data file belongs": (lambda t: (t / "d" / "mnist" / "train-images-idx3-ubyte.gz").mkdir(
        parents=True) or ["train", "--set", f"data.dir={t / 'd'}", "--set", "data.download=false"],
        "train-images-idx3-ubyte.gz is a directory, where the dataset's file belongs"),
    "a model too large for this machine": (lambda t: ["train", *SYNTH, "--set", "model.widths=[1048576, 1048576]"],
                                           "GiB available; make the model smaller"),
    "a cnn too large for this machine": (lambda t: ["train", *SYNTH, "--set", "model.kind=cnn", "--set",
                                                    "model.channels=[65536, 65536]", "--set", "data.shape=[1, 16, 16]"],
                                         "GiB available; make the model smaller"),
    "simulate of a malformed profile.json": (lambda t: _bench_dir(t, '{"batch": 8}') and ["simulate", str(t / "b")],
                                             "profile.json is not what `dfa-async bench` writes (no classes"),
    "bench of a gpt whose heads do not divide its width": (lambda t: ["bench", "--model", "gpt", "--n-head", "3"],
                                                           "--n-head: 3 heads do not divide --n-embd = 128"),
    "sample of a run that is not there": (lambda t: ["sample", str(t / "none")], "holds no run"),
    "simulate of a profile.json that is not JSON": (lambda t: _bench_dir(t, "{") and ["simulate", str(t / "b")],
                                                    "profile.json is not JSON"),
    # issue 27: replicas
    "replicas that do not divide the batch": (lambda t: ["train", *SYNTH, "--set", "runtime.backend=ray", "--set",
                                                         "runtime.replicas=3"],
                                              "runtime.replicas: 3 replicas cannot share train.batch_size = 128 rows"),
    "replicas on the local backend": (lambda t: ["train", *SYNTH, "--set", "runtime.replicas=2"],
                                      "runtime.replicas: 2 copies of the pipeline need runtime.backend = ray"),
    "bench --replicas 3": (lambda t: ["bench", "--replicas", "3"], "--replicas: 3; each must divide --batch 256"),
    # issue 26: weight prediction, positive definite feedback
    "weight prediction with plain SGD": (lambda t: ["train", *SYNTH, "--set", "runtime.weight_prediction=true", "--set",
                                                    "optim.name=sgd", "--set", "optim.momentum=0"],
                                         "runtime.weight_prediction: plain SGD keeps no state to predict"),
    "weight prediction with a bottleneck": (lambda t: ["train", *SYNTH, "--set", "runtime.weight_prediction=true",
                                                       "--set", "model.widths=[16, 16]", "--set", "bottleneck.block=0",
                                                       "--set", "bottleneck.width=4"],
                                            "runtime.weight_prediction: the predicted weights would move the entries"),
    "wishart feedback where e is narrower than the blocks": (lambda t: ["train", *SYNTH, "--set", "feedback.init=wishart"],
                                                             "feedback.init: wishart needs e as wide as every hidden "
                                                             "block (e has 10 features, the blocks [16])"),
}


def _bench_dir(tmp, profile: str):
    (tmp / "b").mkdir()
    (tmp / "b" / "bench.json").write_text('{"meta": {}, "records": []}')
    (tmp / "b" / "profile.json").write_text(profile)
    return True


@pytest.mark.parametrize("case", list(AUDIT), ids=list(AUDIT))
def test_audit_inputs_get_a_one_line_error(case, tmp_path, capsys, monkeypatch):
    from dfa_async import cli

    monkeypatch.chdir(tmp_path)
    make, words = AUDIT[case]
    argv = make(tmp_path)
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exit:  # argparse
        code = exit.code
    err = capsys.readouterr().err.strip()
    assert code == 2, (code, err)
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert words in err, err


def test_report_passes_over_records_without_a_kind(tmp_path, capsys):
    from dfa_async import cli, runlog

    train_args = ["train", *SYNTH, "--no-progress", "--run-dir", str(tmp_path / "r")]
    assert cli.main(train_args) == 0
    with open(tmp_path / "r" / "events.msgpack", "ab") as fh:
        fh.write(runlog.frame({"step": 3, "note": "written by another tool"}))
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "1 record(s) without a kind passed over" in err and (tmp_path / "r" / "report" / "report.md").exists()


def test_audit_inputs_that_now_succeed(tmp_path, capsys, monkeypatch):
    """data.dir=~/x means the home folder's x; a finished checkpoint without its log finishes the run;
    a malformed checkpoint is passed over with a warning."""
    from dfa_async import cli

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    code = cli.main(["train", "--set", "data.dir=~/data", "--set", "data.download=false", "--no-progress"])
    assert code == 2 and not (tmp_path / "~").exists() and str(home / "data") in capsys.readouterr().err
    run = _finished_run(tmp_path)
    (run / "events.msgpack").unlink()
    (run / "final_model.pt").unlink()
    assert cli.main(["train", *SYNTH, "--run-dir", str(run), "--no-progress"]) == 0
    assert runlog.read(run / "events.msgpack", "done") and (run / "final_model.pt").exists()
    torch.save({"step": "x"}, tmp_path / "m.pt")
    (tmp_path / "bad" / "checkpoints").mkdir(parents=True)
    (tmp_path / "m.pt").rename(tmp_path / "bad" / "checkpoints" / "step-00000003.pt")
    capsys.readouterr()
    assert cli.main(["train", *SYNTH, "--run-dir", str(tmp_path / "bad"), "--no-progress"]) == 0
    assert "checkpoint step-00000003.pt is not a dfa-async checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("sig,backend", [("SIGINT", "local"), ("SIGTERM", "ray")])
def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path, sig, backend):
    """Ctrl-C, and SIGTERM (a job's time limit) on either trainer: one line naming the step and the kept
    checkpoint, exit 128 + the signal's number; the same command resumes."""
    import os
    import signal
    import time

    args = ["train", *SYNTH, "--set", "data.n_train=16000", "--set", "train.batch_size=8", "--set",
            "checkpoint.every=100", "--set", f"runtime.backend={backend}", "--no-progress", "--run-dir", "r"]
    # A shell's background job starts with SIGINT ignored, and Python keeps an ignored SIGINT ignored:
    # give the run the default disposition, as a terminal's foreground job has.
    proc = subprocess.Popen([sys.executable, "-m", "dfa_async.cli", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = tmp_path / "r" / "events.msgpack"
    deadline = time.time() + 240
    # a glob, not a parse of the growing log: on a loaded machine the parse fell behind until the run ended
    while time.time() < deadline and proc.poll() is None and not any((tmp_path / "r").glob("checkpoints/step-*.pt")):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.kill(proc.pid, getattr(signal, sig))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + getattr(signal, sig), err
    lines = [ln for ln in err.strip().splitlines() if "warning:" not in ln]  # (2 cores: the time-sharing one)
    # (on Ray, the driver's core worker once printed its native signal report first: no more)
    assert len(lines) == 1, err
    said = "interrupted at step" if sig == "SIGINT" else "terminated (SIGTERM) at step"
    assert said in err and "kept: checkpoint step-" in err and "rerun the same command" in err
    again = dfa_async(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert runlog.read(log, "interrupted") and runlog.read(log, "done")


def test_a_full_disk_names_the_path_and_what_was_kept(tmp_path):
    """RLIMIT_FSIZE makes a file's writes past 30 kB fail (EFBIG), as a full disk would (ENOSPC): here the
    event log's, after a few checkpoints (26 kB each) were written."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))

    args = ["train", *SYNTH, "--set", "checkpoint.every=4", "--set", "train.epochs=6", "--set", "train.batch_size=8",
            "--no-progress", "--run-dir", "r"]
    p = subprocess.run([sys.executable, "-m", "dfa_async.cli", *args], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, preexec_fn=limit)
    assert p.returncode == 1, p.stderr
    err = p.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert "no space left writing r/" in err and "kept: checkpoint step-" in err, err
    again = dfa_async(*args, cwd=tmp_path)  # space again: the same command resumes and finishes
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "r" / "final_model.pt").exists()


def test_a_disk_that_fills_while_a_checkpoint_is_written_is_one_line_and_the_run_resumes(tmp_path):
    """The first checkpoint (~200 kB: a 256-wide block and its Adam state) is past RLIMIT_FSIZE's 100 kB:
    torch's archive writer used to end that in a RuntimeError traceback."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    args = ["train", *SYNTH, "--set", "model.widths=[256]", "--set", "checkpoint.every=4", "--no-progress",
            "--run-dir", "r"]
    p = subprocess.run([sys.executable, "-m", "dfa_async.cli", *args], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, preexec_fn=limit)
    assert p.returncode == 1, p.stderr
    err = p.stderr.strip()
    assert err.count("\n") == 0 and re.search(r"no space left writing r/checkpoints/step-\d+\.pt \(", err), err
    assert "no checkpoint yet" in err and not list((tmp_path / "r" / "checkpoints").iterdir())  # no torn file
    again = dfa_async(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "r" / "final_model.pt").exists()


# -- random command lines: a result or one line of error, never a traceback, never a hang -----------------------
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st  # noqa: E402

FAST = ["--set", "data.name=synthetic", "--set", "data.n_train=64", "--set", "data.n_test=32",
        "--set", "train.max_steps=2", "--set", "runtime.backend=local", "--no-progress"]
WORDS = st.sampled_from(["0", "-4", "1", "2", "3", "a,b", "1,2", "0.5", "", "x", "nope.toml", "/", "/sys/x",
                         "memory://", "nosuch://b", "--", "-", "1e9", "[1,2]", "runs", "notaurl"])
SETS = st.tuples(st.sampled_from(["model.widths", "model.activation", "runtime.depth", "runtime.blocks_per_stage",
                                  "train.batch_size", "optim.lr", "optim.name", "feedback.rule", "train.epochs",
                                  "runtime.transport", "data.dir", "train.root", "checkpoint.every", "bogus.key",
                                  "model", "alignment.every"]), WORDS).map(lambda kv: ["--set", f"{kv[0]}={kv[1]}"])
FLAGS = {
    "train": st.one_of(SETS, st.tuples(st.just("--run-dir"), WORDS).map(list), WORDS.map(lambda w: [w])),
    "bench": st.tuples(st.sampled_from(["--width", "--batch", "--stages", "--depths", "--steps", "--repeats",
                                        "--microbatches", "--fixed-blocks", "--gpus-per-stage", "--to-accuracy",
                                        "--transport", "--device"]), st.sampled_from(["0", "-4", "a,b", "x", "-1"])
                       ).map(list),
    "report": st.one_of(WORDS.map(lambda w: [w]), st.tuples(st.just("--out"), WORDS).map(list)),
    "simulate": st.one_of(WORDS.map(lambda w: [w]), st.tuples(st.sampled_from(["--link", "--workers", "--depth"]),
                                                              WORDS).map(list)),
    "settings": st.just([]),
    "nosuchcommand": st.just([]),
}


@hsettings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(sorted(FLAGS)).flatmap(lambda c: st.tuples(st.just(c), st.lists(FLAGS[c], max_size=3))))
def test_any_command_line_gives_a_result_or_one_line_of_error(tmp_path_factory, capsys, command_and_flags):
    """Bench lines always hold one bad value (a good one would start minutes of measuring)."""
    import os
    import signal

    from dfa_async import cli

    command, flags = command_and_flags
    argv = [command] + [w for f in flags for w in f]
    if command == "train":
        argv += FAST
    if command == "bench":
        argv += ["--steps", "0"]
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cli"))

    def hang(*_):
        raise TimeoutError(f"dfa-async {' '.join(argv)} did not return in 120 s")
    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(120)
    try:
        try:
            code = cli.main(argv)
        except SystemExit as exit:  # argparse: --help or a bad command line
            code = exit.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        os.chdir(cwd)
    err = capsys.readouterr().err.strip()
    assert code in (0, 1, 2), (argv, code, err)  # (an exception would have propagated out of cli.main)
    if code:
        lines = [line for line in err.splitlines() if "warning:" not in line]
        assert len(lines) == 1, (argv, err)


def test_a_reader_that_goes_away_gets_no_traceback(tmp_path):
    """`dfa-async settings | head -1`: the output's reader closes before the command writes."""
    proc = subprocess.Popen([sys.executable, "-m", "dfa_async.cli", "settings"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the child has imported anything, so its first write fails
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err, err


@pytest.mark.parametrize("command", ["train", "doctor", "settings", "report", "bench", "simulate"])
def test_every_command_describes_itself_in_whole_sentences(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    description = " ".join(text.split("\n\n")[1].split())  # the paragraph after the usage
    assert description[0].isupper() and description.endswith(".") and len(description) > 30, description


def test_the_commands_overview_says_what_the_tool_is_and_where_each_commands_help_is(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Direct Feedback Alignment, layer-parallel" in text and "`dfa-async COMMAND --help`" in text


def test_every_audit_case_is_in_the_reliability_table():
    """docs/reliability.md lists every bad input tried, under the name its test case has."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    missing = [case for case in AUDIT if f"\n| {case} |" not in doc]
    assert not missing, f"add to docs/reliability.md: {missing}"
