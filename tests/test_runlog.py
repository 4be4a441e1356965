"""The event log survives a cut at any byte."""
import msgpack
from hypothesis import given, settings, strategies as st

from dfa_async import runlog


def write_records(path, n):
    with runlog.EventLog(path) as log:
        for i in range(n):
            log.write("train", i, loss=1.0 / (i + 1), note="x" * i)
    return runlog.read(path)


def test_records_carry_kind_step_time(tmp_path):
    recs = write_records(tmp_path / "e.msgpack", 3)
    assert [r["step"] for r in recs] == [0, 1, 2]
    assert all(r["kind"] == "train" and isinstance(r["time"], float) for r in recs)


def test_every_truncation_of_the_last_record_keeps_all_complete_ones(tmp_path):
    path = tmp_path / "e.msgpack"
    full = write_records(path, 5)
    data = path.read_bytes()
    last_start = len(data) - len(msgpack.packb(full[-1], use_bin_type=True))
    cut = tmp_path / "cut.msgpack"
    for end in range(last_start, len(data) + 1):
        cut.write_bytes(data[:end])
        got = runlog.read(cut)
        assert got == (full if end == len(data) else full[:-1]), end


def test_appending_after_a_cut_repairs_the_tail(tmp_path):
    path = tmp_path / "e.msgpack"
    full = write_records(path, 3)
    data = path.read_bytes()
    path.write_bytes(data[:-3])
    with runlog.EventLog(path) as log:
        log.write("resume", 2)
    got = runlog.read(path)
    assert got[:2] == full[:2] and got[2]["kind"] == "resume" and len(got) == 3


def test_garbage_after_records_is_ignored(tmp_path):
    path = tmp_path / "e.msgpack"
    full = write_records(path, 2)
    path.write_bytes(path.read_bytes() + b"\xc1\xc1garbage")
    assert runlog.read(path) == full


@settings(max_examples=30, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=5), st.one_of(st.integers(-2**40, 2**40), st.floats(
    allow_nan=False), st.text(max_size=20)), max_size=4), min_size=1, max_size=5), st.data())
def test_any_cut_of_any_log_reads_a_prefix(tmp_path_factory, payloads, data):
    path = tmp_path_factory.mktemp("log") / "e.msgpack"
    with runlog.EventLog(path) as log:
        full = [log.write("x", i, payload=p) for i, p in enumerate(payloads)]
    raw = path.read_bytes()
    end = data.draw(st.integers(0, len(raw)))
    path.write_bytes(raw[:end])
    got = runlog.read(path)
    assert got == full[:len(got)]
    assert len(got) == len(full) or end < len(raw)
