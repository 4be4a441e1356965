"""The run's event log: an append-only sequence of framed records, each a msgpack map with `kind`,
`step` and `time`.

A frame is a 12-byte header and the payload: the 4 bytes C1 44 46 41 (0xC1 is a byte msgpack never
uses, then "DFA"), the payload's length and its CRC-32 (both unsigned 32-bit little-endian), then the
payload, one msgpack map. Any msgpack reader reads the log after that unframing (`frames`).

A crash can cut the file inside its last frame (a torn tail), and a disk can damage bytes anywhere. The
reader returns every intact record and reports the damaged spans it skipped, resynchronising at the next
header; a damaged record never hides the valid ones after it. Opening the log again for appending
removes only a torn tail (a last frame that runs past the end of the file or fails its check with
nothing valid after it). Logs written before framing (plain concatenated msgpack maps) are still read."""
from __future__ import annotations

import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

MAGIC = b"\xc1DFA"
HEADER = struct.Struct("<4sII")


def frame(record: dict) -> bytes:
    payload = msgpack.packb(record, use_bin_type=True)
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


@dataclass
class Scan:
    records: list[dict] = field(default_factory=list)
    damaged: list[tuple[int, int]] = field(default_factory=list)  # (offset, bytes) skipped mid-file
    tail: int | None = None  # offset where a torn tail starts (None: the file ends on a whole record)
    legacy: bool = False

    def problems(self, path) -> list[str]:
        return [f"{path}: {n} damaged bytes at offset {o} skipped (the records there are lost)"
                for o, n in self.damaged]


def _record(data: bytes, pos: int) -> tuple[dict | None, int]:
    """The record framed at `pos` and the offset after it; (None, -1) if no intact frame starts there."""
    if len(data) - pos < HEADER.size or data[pos:pos + 4] != MAGIC:
        return None, -1
    _, length, crc = HEADER.unpack_from(data, pos)
    end = pos + HEADER.size + length
    if end > len(data) or zlib.crc32(data[pos + HEADER.size:end]) != crc:
        return None, -1
    try:
        obj = msgpack.unpackb(data[pos + HEADER.size:end], raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException):  # TypeError: a map or list as a map's key
        return None, -1
    return (obj, end) if isinstance(obj, dict) else (None, -1)


def scan(data: bytes) -> Scan:
    out = _scan_framed(data)
    if data and not data.startswith(MAGIC) and not out.records:
        legacy = _scan_legacy(data)
        if legacy.records:
            return legacy
    return out


def _scan_framed(data: bytes) -> Scan:
    out, pos = Scan(), 0
    while pos < len(data):
        rec, end = _record(data, pos)
        if rec is not None:
            out.records.append(rec)
            pos = end
            continue
        nxt = data.find(MAGIC, pos + 1)
        while nxt >= 0 and _record(data, nxt)[0] is None:  # a header's bytes inside damage or a payload
            nxt = data.find(MAGIC, nxt + 1)
        if nxt < 0:
            out.tail = pos
            break
        out.damaged.append((pos, nxt - pos))
        pos = nxt
    return out


def _scan_legacy(data: bytes) -> Scan:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data)
    out, end = Scan(legacy=True), 0
    try:
        for obj in unpacker:
            if not (isinstance(obj, dict) and "kind" in obj and "step" in obj):
                break
            out.records.append(obj)
            end = unpacker.tell()
    except (ValueError, TypeError, msgpack.UnpackException):
        pass
    out.tail = end if end != len(data) else None
    return out


def frames(data: bytes) -> list[bytes]:
    """The payloads of the intact frames: each one msgpack map, for any msgpack reader."""
    return [msgpack.packb(r, use_bin_type=True) for r in scan(data).records]


def read(path: str | Path, kind: str | None = None) -> list[dict]:
    """Every intact record of the log (of one kind, if given)."""
    records = scan(Path(path).read_bytes()).records
    return [r for r in records if kind is None or r.get("kind") == kind]


class EventLog:
    """Appends framed records. Opening an existing log checks it: a torn tail is cut off (and reported in
    `repaired`), damaged spans are left in place and listed in `problems`; a log of the unframed format is
    rewritten framed (atomically) first."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.problems: list[str] = []
        self.repaired: tuple[int, int] | None = None  # (offset, bytes) of a torn tail removed
        if self.path.exists():
            data = self.path.read_bytes()
            found = scan(data)
            self.problems = found.problems(self.path)
            if found.legacy:
                tmp = self.path.with_name(f".{self.path.name}.tmp")
                tmp.write_bytes(b"".join(frame(r) for r in found.records))
                os.replace(tmp, self.path)
            elif found.tail is not None:
                self.repaired = (found.tail, len(data) - found.tail)
                with open(self.path, "r+b") as fh:
                    fh.truncate(found.tail)
        self._fh = open(self.path, "ab")

    def write(self, kind: str, step: int, **fields) -> dict:
        record = {"kind": kind, "step": int(step), "time": time.time(), **fields}
        try:
            self._fh.write(frame(record))
            self._fh.flush()
        except OSError as err:  # name the file (a full disk's error does not)
            raise OSError(err.errno, err.strerror, str(self.path)) from None
        return record

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
