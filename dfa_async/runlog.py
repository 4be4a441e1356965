"""The run's event log: an append-only stream of msgpack maps, each with `kind`, `step` and `time`.

A crash can cut the file anywhere; `read` returns every complete record before the cut, and opening
the log again for appending first trims the partial tail, so records written after a restart stay
readable."""
from __future__ import annotations

import os
import time
from pathlib import Path

import msgpack


def _scan(data: bytes) -> tuple[list[dict], int]:
    """Complete records of `data` and the byte offset just after the last of them."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data)
    records, end = [], 0
    try:
        for obj in unpacker:
            if not isinstance(obj, dict):
                break
            records.append(obj)
            end = unpacker.tell()
    except (ValueError, msgpack.UnpackException):
        pass  # garbage after the last good record: keep what came before it
    return records, end


def read(path: str | Path, kind: str | None = None) -> list[dict]:
    """Every complete record of the log (of one kind, if given)."""
    records, _ = _scan(Path(path).read_bytes())
    return [r for r in records if kind is None or r.get("kind") == kind]


class EventLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists():
            data = self.path.read_bytes()
            _, end = _scan(data)
            if end != len(data):
                with open(self.path, "r+b") as fh:
                    fh.truncate(end)
        self._fh = open(self.path, "ab")

    def write(self, kind: str, step: int, **fields) -> dict:
        record = {"kind": kind, "step": int(step), "time": time.time(), **fields}
        self._fh.write(msgpack.packb(record, use_bin_type=True))
        self._fh.flush()
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
