"""The event log: framed records that survive a cut at any byte and damage anywhere."""
import zlib

import msgpack
from hypothesis import example, given, settings, strategies as st

from dfa_async import runlog

RECORDS = st.lists(st.dictionaries(st.text(max_size=5), st.one_of(
    st.integers(-2**40, 2**40), st.floats(allow_nan=False), st.text(max_size=20), st.binary(max_size=12))),
    min_size=1, max_size=8)


def write_records(path, n):
    with runlog.EventLog(path) as log:
        for i in range(n):
            log.write("train", i, loss=1.0 / (i + 1), note="x" * i)
    return runlog.read(path)


def write_payloads(path, payloads):
    with runlog.EventLog(path) as log:
        return [log.write("x", i, payload=p) for i, p in enumerate(payloads)]


def test_records_carry_kind_step_time(tmp_path):
    recs = write_records(tmp_path / "e.msgpack", 3)
    assert [r["step"] for r in recs] == [0, 1, 2]
    assert all(r["kind"] == "train" and isinstance(r["time"], float) for r in recs)


def test_the_frame_is_what_the_docs_say(tmp_path):
    """Header C1 'DFA', length and CRC-32 (little-endian u32), then one msgpack map."""
    import struct
    import zlib

    path = tmp_path / "e.msgpack"
    (rec,) = write_records(path, 1)
    raw = path.read_bytes()
    magic, length, crc = struct.unpack("<4sII", raw[:12])
    assert magic == b"\xc1DFA" and length == len(raw) - 12 and crc == zlib.crc32(raw[12:])
    assert msgpack.unpackb(raw[12:]) == rec
    assert [msgpack.unpackb(f) for f in runlog.frames(raw)] == [rec]


def test_every_truncation_of_the_last_record_keeps_all_complete_ones(tmp_path):
    path = tmp_path / "e.msgpack"
    full = write_records(path, 5)
    data = path.read_bytes()
    last_start = len(data) - 12 - len(msgpack.packb(full[-1], use_bin_type=True))
    cut = tmp_path / "cut.msgpack"
    for end in range(last_start, len(data) + 1):
        cut.write_bytes(data[:end])
        got = runlog.read(cut)
        assert got == (full if end == len(data) else full[:-1]), end


def test_appending_after_a_cut_repairs_only_the_torn_tail(tmp_path):
    path = tmp_path / "e.msgpack"
    full = write_records(path, 3)
    data = path.read_bytes()
    path.write_bytes(data[:-3])
    with runlog.EventLog(path) as log:
        assert log.repaired == (len(data) - 12 - len(msgpack.packb(full[-1])), 12 + len(msgpack.packb(full[-1])) - 3)
        log.write("resume", 2)
    got = runlog.read(path)
    assert got[:2] == full[:2] and got[2]["kind"] == "resume" and len(got) == 3


def test_a_damaged_byte_mid_log_loses_one_record_and_reopening_keeps_the_rest(tmp_path):
    """The audit's case: one corrupt byte in the middle; before framing, the resume deleted every
    record after it."""
    path = tmp_path / "e.msgpack"
    full = write_records(path, 200)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))
    got = runlog.read(path)
    assert len(got) == 199 and all(r in full for r in got)
    with runlog.EventLog(path) as log:
        assert log.repaired is None and len(log.problems) == 1 and "damaged bytes" in log.problems[0]
        log.write("resume", 200)
    again = runlog.read(path)
    assert again[:199] == got and again[-1]["kind"] == "resume"


def test_logs_of_the_unframed_format_are_read_and_rewritten_framed(tmp_path):
    path = tmp_path / "e.msgpack"
    old = [{"kind": "train", "step": i, "time": 1.0 + i} for i in range(4)]
    path.write_bytes(b"".join(msgpack.packb(r) for r in old) + b"\x93\x01")  # and a torn tail
    assert runlog.read(path) == old
    with runlog.EventLog(path) as log:
        log.write("resume", 4)
    assert path.read_bytes().startswith(b"\xc1DFA")
    assert runlog.read(path)[:4] == old and len(runlog.read(path)) == 5


@settings(max_examples=60, deadline=None)
@given(RECORDS, st.data())
def test_any_cut_of_any_log_reads_a_prefix(tmp_path_factory, payloads, data):
    path = tmp_path_factory.mktemp("log") / "e.msgpack"
    full = write_payloads(path, payloads)
    raw = path.read_bytes()
    end = data.draw(st.integers(0, len(raw)))
    path.write_bytes(raw[:end])
    got = runlog.read(path)
    assert got == full[:len(got)]
    assert len(got) == len(full) or end < len(raw)


@settings(max_examples=150, deadline=None)
@given(RECORDS, st.data())
def test_bit_flips_anywhere_lose_only_the_records_they_touch(tmp_path_factory, payloads, data):
    """Flip bits at random offsets: every record whose frame holds no flipped byte is recovered, in order;
    nothing is invented."""
    path = tmp_path_factory.mktemp("log") / "e.msgpack"
    full = write_payloads(path, payloads)
    raw = bytearray(path.read_bytes())
    spans, pos = [], 0
    for rec in full:
        n = 12 + len(msgpack.packb(rec, use_bin_type=True))
        spans.append((pos, pos + n))
        pos += n
    hits = data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=4, unique=True))
    for h in hits:
        raw[h] ^= 1 << data.draw(st.integers(0, 7))
    path.write_bytes(bytes(raw))
    got = runlog.read(path)
    intact = [rec for rec, (a, b) in zip(full, spans) if not any(a <= h < b for h in hits)]
    assert got == intact


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400))
@example(b"\x81\x80\x00")  # a map whose key is a map: msgpack raises TypeError (unhashable), found by hypothesis
def test_random_bytes_never_raise(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("log") / "e.msgpack"
    path.write_bytes(blob)
    assert all(isinstance(r, dict) for r in runlog.read(path))
    path.write_bytes(runlog.MAGIC + blob)
    runlog.read(path)
    # the same bytes as the payload of a frame whose checksum holds: skipped, not raised
    path.write_bytes(runlog.HEADER.pack(runlog.MAGIC, len(blob), zlib.crc32(blob)) + blob)
    assert all(isinstance(r, dict) for r in runlog.read(path))
