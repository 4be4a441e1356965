"""Run directories at an fsspec URI (memory://, file://): staged, pushed atomically, resumed from."""
import tempfile
from pathlib import Path

import fsspec
import pytest
import torch

from dfa_async import runlog, storage, train
from dfa_async.config import ConfigError

from conftest import small_config

COMMON = dict(train={"epochs": 2}, runtime={"depth": 2}, checkpoint={"every": 7, "keep": 10},
              optim={"schedule": "cosine"})


@pytest.fixture
def mem():
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs.clear()
    fs.pseudo_dirs.append("")
    yield fs
    fs.store.clear()


def read_state(fs, path):
    with fs.open(path, "rb") as fh:
        return torch.load(fh, weights_only=True)


def test_a_run_at_a_uri_lands_whole_and_leaves_no_staging(mem, tmp_path):
    staged = set(Path(tempfile.gettempdir()).glob("dfa-async-run-*"))
    res = train(small_config(**{**COMMON, "train": {"epochs": 2, "root": "memory://bucket/runs", "name": "r"}}))
    assert set(Path(tempfile.gettempdir()).glob("dfa-async-run-*")) == staged
    assert res.run_dir == "memory://bucket/runs/r"
    names = sorted(p.split("/bucket/runs/r/", 1)[1] for p in mem.find("/bucket/runs/r"))
    assert names == ["checkpoints/step-00000006.pt", "checkpoints/step-00000013.pt", "checkpoints/step-00000020.pt",
                     "checkpoints/step-00000027.pt", "checkpoints/step-00000031.pt", "config.toml",
                     "events.msgpack", "final_model.pt"]
    local = tmp_path / "local"
    straight = train(small_config(**COMMON), local)
    assert b'root = "memory://bucket/runs"' in mem.cat("/bucket/runs/r/config.toml")
    a, b = read_state(mem, "/bucket/runs/r/final_model.pt"), torch.load(local / "final_model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert res.test_accuracy == straight.test_accuracy
    (tmp_path / "ev").write_bytes(mem.cat("/bucket/runs/r/events.msgpack"))
    assert runlog.read(tmp_path / "ev")[-1]["kind"] == "done"


def test_resume_from_a_uri_equals_a_straight_run(mem, tmp_path):
    straight = train(small_config(**COMMON), tmp_path / "straight")
    uri = "memory://bucket/part"
    train(small_config(**COMMON), uri)
    # A driver lost after step 13: the later checkpoints and the final model never reached the URI.
    for p in mem.find("/bucket/part/checkpoints"):
        if int(p[-11:-3]) > 13:
            mem.rm(p)
    mem.rm("/bucket/part/final_model.pt")
    resumed = train(small_config(**COMMON), uri)
    a = torch.load(tmp_path / "straight" / "final_model.pt", weights_only=True)
    b = read_state(mem, "/bucket/part/final_model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.test_accuracy == straight.test_accuracy
    (tmp_path / "ev").write_bytes(mem.cat("/bucket/part/events.msgpack"))
    resumes = runlog.read(tmp_path / "ev", "resume")
    assert [r["checkpoint"] for r in resumes] == ["step-00000013.pt"]
    with pytest.raises(ConfigError, match="finished run"):
        train(small_config(**COMMON), uri)


def test_another_run_at_the_uri_is_refused_and_nothing_changes(mem):
    train(small_config(), "memory://bucket/x")
    before = {p: mem.cat(p) for p in mem.find("/bucket/x")}
    with pytest.raises(ConfigError, match="other settings"):
        train(small_config(optim={"lr": 0.5}), "memory://bucket/x")
    assert {p: mem.cat(p) for p in mem.find("/bucket/x")} == before


def test_file_uri_is_a_local_path(tmp_path):
    res = train(small_config(train={"root": f"file://{tmp_path}/runs", "name": "f"}))
    assert res.run_dir == tmp_path / "runs" / "f" and (res.run_dir / "final_model.pt").exists()


def test_unknown_protocol_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"train.root: 'nosuch://b/r/x'.*no protocol 'nosuch'.*memory"):
        train(small_config(train={"root": "nosuch://b/r", "name": "x"}))


@pytest.fixture
def quick_retries(monkeypatch):
    from dfa_async.storage import remote

    monkeypatch.setattr(remote, "BACKOFF_S", 0.001)


def test_pushes_that_fail_twice_transiently_are_retried_and_the_run_completes(mem, monkeypatch, tmp_path,
                                                                                quick_retries):
    put, failures = mem.put_file, []

    def flaky(*args, **kwargs):
        if len(failures) < 2:
            failures.append(args)
            raise ConnectionResetError("connection reset by peer")
        return put(*args, **kwargs)
    monkeypatch.setattr(mem, "put_file", flaky)
    res = train(small_config(**COMMON), "memory://bucket/flaky")
    assert len(failures) == 2  # the first push's first file, twice
    straight = train(small_config(**COMMON), tmp_path / "straight")
    a = read_state(mem, "/bucket/flaky/final_model.pt")
    b = torch.load(tmp_path / "straight" / "final_model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a) and res.test_accuracy == straight.test_accuracy
    names = sorted(p.split("/bucket/flaky/", 1)[1] for p in mem.find("/bucket/flaky"))
    assert names == sorted(p.relative_to(tmp_path / "straight").as_posix()
                           for p in (tmp_path / "straight").rglob("*")
                           if p.is_file() and p.name != ".lock")  # nothing lost, no .tmp left


def test_a_failed_push_keeps_the_old_file_and_names_the_staging_folder(mem, monkeypatch, quick_retries):
    store = storage.open_run("memory://bucket/s")
    (store.local / "events.msgpack").write_bytes(b"old")
    store.push()
    (store.local / "events.msgpack").write_bytes(b"new, longer")

    tries = []

    def broken(*a, **k):
        tries.append(a)
        raise OSError("link down")
    monkeypatch.setattr(store.fs, "mv", broken)
    with pytest.raises(OSError, match=f"files are kept in {store.local}"):
        store.close()
    assert len(tries) == 5  # storage.remote.ATTEMPTS, then it gives up
    assert mem.cat("/bucket/s/events.msgpack") == b"old"  # never half-written: the temporary copy carries it
    assert (store.local / "events.msgpack").read_bytes() == b"new, longer"
    monkeypatch.undo()
    store.close()  # the link is back: the push completes and the staging folder goes
    assert mem.cat("/bucket/s/events.msgpack") == b"new, longer" and not store.local.exists()


def test_report_of_a_run_at_a_uri_is_written_back_under_it(mem):
    from dfa_async import report

    train(small_config(), "memory://bucket/rep")
    assert report.write("memory://bucket/rep") == "memory://bucket/rep/report/report.md"
    assert b"# Run report" in mem.cat("/bucket/rep/report/report.md")
    assert mem.exists("/bucket/rep/report/loss.png")
