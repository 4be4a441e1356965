"""The pipeline schedule of DESIGN.md as a pure function: which op of which step, in order.

With in-flight depth D, after forward(t) comes update(t - D + 1); at a boundary (a checkpoint, the end of
an epoch, the end of the run) every pending update is drained before the next forward. Every stage runs
the ops in this order, and so does the single-process reference.

A window is a slice of the run's op sequence cut just before a forward: `ops(a, b, …)` is the part from
forward(a) up to (not including) forward(b). Cutting adds no drain, so any split of a run into windows
carries out exactly the run's sequence."""
from __future__ import annotations

from bisect import bisect_left
from collections import deque
from typing import Iterable, Iterator, NamedTuple


class Op(NamedTuple):
    kind: str  # "forward" | "update" | "boundary"
    step: int


def ops(start: int, stop: int, depth: int, boundaries: Iterable[int] = ()) -> Iterator[Op]:
    """Ops of the window [start, stop) of a run that begins at step 0 or just after a boundary and whose
    pipeline drains after each step in `boundaries` (marked by Op("boundary", t)); a run's last step
    must be one. A list or tuple of boundaries must be sorted (as `boundaries()` returns them); any other
    iterable is sorted here. The steps in flight at `start` follow from the schedule itself: those after
    the last boundary before `start`, at most depth - 1 of them."""
    if depth < 1:
        raise ValueError(f"depth: {depth}; it must be >= 1")
    marks = boundaries if isinstance(boundaries, (list, tuple)) else sorted(set(boundaries))
    i, j = bisect_left(marks, start), bisect_left(marks, stop)
    last = marks[i - 1] if i else -1
    pending: deque[int] = deque(range(max(last + 1, start - depth + 1), start))
    here = set(marks[i:j])
    for t in range(start, stop):
        yield Op("forward", t)
        pending.append(t)
        if t in here:
            while pending:
                yield Op("update", pending.popleft())
            yield Op("boundary", t)
        elif len(pending) >= depth:
            yield Op("update", pending.popleft())


def boundaries(total_steps: int, steps_per_epoch: int, checkpoint_every: int, eval_every: int = 0) -> list[int]:
    """Steps after which the pipeline drains: each epoch's last step, every checkpoint and every
    evaluation."""
    marks = set(range(steps_per_epoch - 1, total_steps, steps_per_epoch))
    for every in (checkpoint_every, eval_every):
        if every:
            marks |= set(range(every - 1, total_steps, every))
    marks.add(total_steps - 1)
    return sorted(marks)


def window_end(start: int, stop: int, cuts: list[int], longest: int = 0) -> int:
    """End of the window that starts at `start`: just after the first step in `cuts` (sorted) at or
    after `start`, at most `longest` steps on (0: no limit), at most `stop`."""
    i = bisect_left(cuts, start)
    end = cuts[i] + 1 if i < len(cuts) and cuts[i] < stop else stop
    return min(end, start + longest) if longest else end


def staleness(step_ops: Iterable[Op]) -> dict[int, int]:
    """For each step, the updates applied between its forward and its own update (D - 1 in steady
    state): what a stage observes, derived from the schedule alone."""
    applied, at_forward, out = 0, {}, {}
    for op in step_ops:
        if op.kind == "forward":
            at_forward[op.step] = applied
        elif op.kind == "update":
            out[op.step] = applied - at_forward.pop(op.step)
            applied += 1
    return out
