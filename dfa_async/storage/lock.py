"""One writer per run directory: an exclusive lock (flock) on RUN_DIR/.lock, held while the run writes.

The kernel drops the lock when its holder dies, however it dies, so a lock never outlives its run (NFS
v4 keeps flock too). The file says who holds it (pid, host, start time) for the error a second writer
gets; it stays in place between runs."""
from __future__ import annotations

import fcntl
import json
import os
import pwd
import socket
import time
from pathlib import Path

from ..config import ConfigError

NAME = ".lock"


class RunLock:
    def __init__(self, run_dir: Path, shown: str):
        self.path = Path(run_dir) / NAME
        try:
            self.fh = open(self.path, "a+")
        except PermissionError as err:  # e.g. a run directory another user's run made
            raise ConfigError(f"--run-dir {shown}: cannot open its {NAME} for writing ({err.strerror}; it belongs to "
                              f"{owner(self.path)}); run as that user or choose another directory") from None
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            try:
                who = json.loads(self.fh.read() or "{}")
            except ValueError:
                who = {}
            self.fh.close()
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(who["time"])) if "time" in who else "?"
            raise ConfigError(f"--run-dir {shown}: in use by another run (pid {who.get('pid', '?')} on host "
                              f"{who.get('host', '?')}, since {since}); wait for it to end or choose another "
                              "directory") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}))
        self.fh.flush()

    def release(self) -> None:
        if not self.fh.closed:
            self.fh.seek(0)
            self.fh.truncate()
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()


def owner(path: Path) -> str:
    """The user name owning `path` (or the directory above it), for messages."""
    for p in (path, path.parent):
        try:
            uid = p.stat().st_uid
        except OSError:
            continue
        try:
            return f"user {pwd.getpwuid(uid).pw_name}"
        except KeyError:
            return f"uid {uid}"
    return "another user"
