"""The machine under a bench: its CPU model, how idle its cores are (/proc/stat), waiting for them to
quiet down, and a device sync for timing asynchronous kernels."""
from __future__ import annotations

import platform
import time
from pathlib import Path

import torch


def machine_ticks() -> tuple[int, int]:
    """This machine's idle (with iowait) and total CPU ticks so far (/proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return ticks[3] + ticks[4], sum(ticks)


def idle_between(a: tuple[int, int], b: tuple[int, int]) -> float:
    """Fraction of the CPU time between two `machine_ticks` readings spent idle."""
    return (b[0] - a[0]) / max(b[1] - a[1], 1)


def idle_fraction(span: float) -> float | None:
    """Fraction of this machine's CPU time spent idle over the next `span` seconds (None without
    /proc/stat)."""
    try:
        a = machine_ticks()
        time.sleep(span)
        b = machine_ticks()
    except OSError:
        return None
    return idle_between(a, b)


def wait_quiet(idle: float = 0.9, span: float = 1.0, limit: float = 30.0) -> bool:
    """Wait until the cores are at least `idle` idle over `span` seconds, at most `limit` seconds; True when
    they were. For ~2 s after a local Ray starts, its prestarted workers keep both cores of this machine
    half busy; a link measured then read 40x the latency of an idle machine."""
    deadline = time.monotonic() + limit
    while True:
        frac = idle_fraction(span)
        if frac is None or frac >= idle:
            return True
        if time.monotonic() >= deadline:
            return False


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
