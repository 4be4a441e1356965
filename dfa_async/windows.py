"""Driving a pipeline (`executor.Pipeline`) in windows: the one loop the trainer, the bench and the
time-to-accuracy runner share, and the stages' busy time read from the op timestamps they return."""
from __future__ import annotations

from typing import Callable

from . import schedule
from .runlog import EventLog

WINDOW_S = 1.0  # automatic windows (runtime.window = 0) hold about this much work


class Windows:
    """The windows the driver asks the stages for: one ends after every cut (where the driver has work)
    and none is longer than `fixed` steps or, when `fixed` is 0, than about WINDOW_S seconds of work at
    the speed measured on the windows so far (each window costs a round of calls)."""

    def __init__(self, start: int, stop: int, cuts, fixed: int = 0):
        self.start, self.stop, self.cuts, self.fixed = start, stop, sorted(set(cuts)), fixed
        self.longest = fixed or 8

    def __iter__(self):
        while self.start < self.stop:
            end = schedule.window_end(self.start, self.stop, self.cuts, self.longest)
            yield self.start, end
            self.start = end

    def measured(self, win) -> None:
        spans = [(tl[0][2], tl[-1][3]) for tl in win.timelines if tl]
        if self.fixed or not spans:
            return
        secs = max(end for _, end in spans) - min(start for start, _ in spans)
        self.longest = max(1, min(int((win.stop - win.start) / max(secs, 1e-6) * WINDOW_S), 100_000))


def drive(pipe, start: int, stop: int, cuts=(), fixed: int = 0, on_window: Callable | None = None,
          at_cut: Callable[[int], None] | None = None) -> None:
    """Run steps start..stop-1 on `pipe` in windows. The next window is queued behind the running one, so
    the stages never wait for the driver, except where a window ends at a cut (a boundary, a probe, an
    evaluation): that one is waited for and then `at_cut(step)` runs on the drained pipeline. Every
    finished window goes to `on_window` in order."""
    cuts = set(cuts)
    windows = Windows(start, stop, cuts, fixed)

    def finish(handle):
        win = pipe.collect(handle)
        if on_window:
            on_window(win)
        windows.measured(win)

    running = None
    for a, b in windows:
        handle = pipe.submit(a, b)
        if running is not None:
            finish(running)
        running = handle
        if b - 1 in cuts:
            finish(running)
            running = None
            if at_cut:
                at_cut(b - 1)
    if running is not None:
        finish(running)


def busy(ops: list) -> tuple[float, float]:
    """Seconds a stage spent inside its ops (op, step, start, end, staleness) and the span from the first
    op's start to the last one's end; the rest of the span it waited."""
    return sum(end - start for _, _, start, end, _ in ops), ops[-1][3] - ops[0][2]


def idle(busy_s: float, span_s: float) -> float:
    """The share of a span not spent inside ops."""
    return max(0.0, 1 - busy_s / span_s) if span_s > 0 else 0.0


class Timelines:
    """Per-stage host timestamps, written after every window as one `timeline` record per stage actor, and
    totals (busy time, idle fraction) written at the end as `stage` records. With replicas, each record
    also names its `replica`."""

    def __init__(self):
        self.busy, self.first, self.last = {}, {}, {}

    def write(self, win, log: EventLog, step: int) -> None:
        """Window `win`'s timelines (a stage.Window)."""
        for i, tl in enumerate(win.timelines):
            if not tl:
                continue
            op, steps, start, end, stale = (list(c) for c in zip(*tl))
            s, r = win.where(i)
            log.write("timeline", step, stage=s, **({"replica": r} if win.replicas > 1 else {}), op=op, steps=steps,
                      start=start, end=end, staleness=stale, **(win.stats[i] if win.stats else {}))
            self.add((s, r) if win.replicas > 1 else s, tl)

    def add(self, s, ops: list) -> None:
        """Ops of stage `s` (or (stage, replica))."""
        self.busy[s] = self.busy.get(s, 0.0) + busy(ops)[0]
        self.first.setdefault(s, ops[0][2])
        self.last[s] = ops[-1][3]

    def totals(self) -> list[dict]:
        out = []
        for s in sorted(self.busy):
            span = self.last[s] - self.first[s]
            where = {"stage": s[0], "replica": s[1]} if isinstance(s, tuple) else {"stage": s}
            out.append({**where, "busy_s": self.busy[s], "span_s": span, "idle_fraction": idle(self.busy[s], span)})
        return out

    def summary(self, log: EventLog, step: int) -> list[dict]:
        out = self.totals()
        for rec in out:
            log.write("stage", step, **rec)
        return out
