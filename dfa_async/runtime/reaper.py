"""Ends a private Ray instance whose driver was killed (kill -9) before it could stop it: some of Ray's
helper processes of a local instance outlive their driver. When the driver starts its own instance, it
starts this watcher too, with the pids (and start times, so a reused pid is never touched) of the
instance's processes; when the driver dies, the watcher ends those processes and exits. A driver that
ends normally stops the instance itself and then the watcher. Linux only (/proc); elsewhere a no-op."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[19])


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of every live descendant of `pid`."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))):
            parents[int(entry.name)] = st
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        for child, (ppid, start) in parents.items():
            if ppid == p:
                out.append((child, start))
                frontier.append(child)
    return out


def watch(driver: int, exclude: set[int] = frozenset()) -> subprocess.Popen | None:
    """Start the watcher for the processes `driver` (this process) has started so far, but `exclude`."""
    if not Path("/proc/self/stat").exists():
        return None
    procs = [(p, s) for p, s in descendants(driver) if p not in exclude]
    if not procs:
        return None
    args = [sys.executable, "-m", "dfa_async.runtime.reaper", str(driver)] + [f"{p}:{s}" for p, s in procs]
    # Its own session: a Ctrl-C or kill of the driver's process group leaves it to do its work.
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _wait_for_death(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:  # readable when the process ends: no polling
        select.select([fd], [], [])
        os.close(fd)
        return
    while _stat(pid) is not None:
        time.sleep(1.0)


def reap(procs: list[tuple[int, int]], grace_s: float = 5.0) -> None:
    """SIGTERM the processes still alive with their recorded start time; SIGKILL those left after grace_s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p, start in procs if (st := _stat(p)) and st[1] == start]
        for p in alive:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_s
        while alive and time.time() < deadline:
            alive = [p for p, start in procs if (st := _stat(p)) and st[1] == start]
            time.sleep(0.1)
        if not alive:
            return


def main(argv: list[str]) -> None:
    driver = int(argv[0])
    procs = [tuple(int(v) for v in item.split(":")) for item in argv[1:]]
    _wait_for_death(driver)
    reap(procs)


if __name__ == "__main__":
    main(sys.argv[1:])
