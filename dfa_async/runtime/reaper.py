"""Ends a private Ray instance whose driver was killed (kill -9) before it could stop it: some of Ray's
helper processes of a local instance outlive their driver. When the driver starts its own instance, it
starts this watcher too, with the pids (and start times, so a reused pid is never touched) of the
instance's processes; when the driver dies, the watcher ends those processes and exits. A driver that
ends normally stops the instance itself and then the watcher."""
from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import psutil


def _same(pid: int, start: float) -> psutil.Process | None:
    """The process `pid` if it is the one that started at `start` and has not ended (a zombie has)."""
    try:
        p = psutil.Process(pid)
        return p if p.create_time() == start and p.status() != psutil.STATUS_ZOMBIE else None
    except psutil.NoSuchProcess:
        return None


def descendants(pid: int) -> list[tuple[int, float]]:
    """(pid, start time) of every live descendant of `pid`."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for child in children:
        try:
            out.append((child.pid, child.create_time()))
        except psutil.NoSuchProcess:
            pass
    return out


def watch(driver: int, exclude: set[int] = frozenset()) -> subprocess.Popen | None:
    """Start the watcher for the processes `driver` (this process) has started so far, but `exclude`."""
    procs = [(p, s) for p, s in descendants(driver) if p not in exclude]
    if not procs:
        return None
    args = [sys.executable, "-m", "dfa_async.runtime.reaper", str(driver)] + [f"{p}:{s!r}" for p, s in procs]
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
    while psutil.pid_exists(pid):
        time.sleep(1.0)


def reap(procs: list[tuple[int, float]], grace_s: float = 5.0) -> None:
    """SIGTERM the processes still alive with their recorded start time; SIGKILL those left after grace_s."""
    for end in (psutil.Process.terminate, psutil.Process.kill):
        alive = [p for pid, start in procs if (p := _same(pid, start))]
        for p in alive:
            try:
                end(p)
            except psutil.NoSuchProcess:
                pass
        deadline = time.time() + grace_s
        while alive and time.time() < deadline:
            time.sleep(0.05)
            alive = [p for pid, start in procs if (p := _same(pid, start))]
        if not alive:
            return


def main(argv: list[str]) -> None:
    driver = int(argv[0])
    procs = [(int(pid), float(start)) for pid, start in (item.split(":") for item in argv[1:])]
    _wait_for_death(driver)
    reap(procs)


if __name__ == "__main__":
    main(sys.argv[1:])
