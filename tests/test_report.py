"""`dfa-async report`: tables and plots from the event log alone."""
import pytest

from dfa_async import report, runlog, train

from conftest import small_config


def test_report_from_a_run(tmp_path):
    res = train(small_config(train={"epochs": 2}, alignment={"every": 8, "probe_size": 16}), tmp_path / "r")
    md_path = report.write(tmp_path / "r")
    md = md_path.read_text()
    assert f"| {res.steps} | {res.test_accuracy:.4f} |" in md
    aligns = runlog.read(tmp_path / "r" / "events.msgpack", "align")
    first = aligns[0]["blocks"][0]
    assert f"| {aligns[0]['step']} | {first['cos_mean']:.3f} ± {first['cos_std']:.3f} |" in md
    for name in ("loss.png", "test_error.png", "alignment.png"):
        data = (md_path.parent / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"({name})" in md


def test_report_of_an_unfinished_run_and_of_a_missing_dir(tmp_path):
    train(small_config(), tmp_path / "r")
    log = tmp_path / "r" / "events.msgpack"
    recs = runlog.read(log)
    import msgpack
    raw = log.read_bytes()
    log.write_bytes(raw[:len(raw) - len(msgpack.packb(recs[-1])) - 3])  # cut inside the record before `done`
    md = report.write(tmp_path / "r").read_text()
    assert "has not finished" in md
    with pytest.raises(FileNotFoundError, match="RUN_DIR"):
        report.write(tmp_path / "nothing")
