"""The machine under a bench: its CPU model, how idle its cores are (psutil), waiting for them to quiet
down, and a device sync for timing asynchronous kernels."""
from __future__ import annotations

import platform
import time
from pathlib import Path

import psutil
import torch


def machine_ticks() -> tuple[float, float]:
    """This machine's idle (with iowait, where the system counts it) and total CPU seconds so far, all
    cores together."""
    t = psutil.cpu_times()
    return t.idle + getattr(t, "iowait", 0.0), sum(t)


def idle_between(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Fraction of the CPU time between two `machine_ticks` readings spent idle."""
    return (b[0] - a[0]) / max(b[1] - a[1], 1e-9)


def idle_fraction(span: float) -> float:
    """Fraction of this machine's CPU time spent idle over the next `span` seconds."""
    a = machine_ticks()
    time.sleep(span)
    return idle_between(a, machine_ticks())


def wait_quiet(idle: float = 0.9, span: float = 1.0, limit: float = 30.0) -> bool:
    """Wait until the cores are at least `idle` idle over `span` seconds, at most `limit` seconds; True when
    they were. For ~2 s after a local Ray starts, its prestarted workers keep both cores of this machine
    half busy; a link measured then read 40x the latency of an idle machine."""
    deadline = time.monotonic() + limit
    while True:
        if idle_fraction(span) >= idle:
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
