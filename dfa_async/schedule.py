"""The pipeline schedule of DESIGN.md as a pure function: which op of which step, in order.

With in-flight depth D, after forward(t) comes update(t - D + 1); at a boundary (a checkpoint, the end of
an epoch, the end of the run) every pending update is drained before the next forward. Every stage runs
the ops in this order, and so does the single-process reference."""
from __future__ import annotations

from collections import deque
from typing import Iterable, Iterator, NamedTuple


class Op(NamedTuple):
    kind: str  # "forward" | "update" | "boundary"
    step: int


def ops(start: int, stop: int, depth: int, boundaries: Iterable[int] = ()) -> Iterator[Op]:
    """Ops for steps start..stop-1 with an empty pipeline at `start`. A boundary after step t (and
    always after the last step) drains the pipeline and is marked by Op("boundary", t)."""
    if depth < 1:
        raise ValueError(f"depth: {depth}; it must be >= 1")
    marks = set(boundaries)
    pending: deque[int] = deque()
    for t in range(start, stop):
        yield Op("forward", t)
        pending.append(t)
        if t in marks or t == stop - 1:
            while pending:
                yield Op("update", pending.popleft())
            yield Op("boundary", t)
        elif len(pending) >= depth:
            yield Op("update", pending.popleft())


def boundaries(total_steps: int, steps_per_epoch: int, checkpoint_every: int) -> list[int]:
    """Steps after which the pipeline drains: each epoch's last step and every checkpoint."""
    marks = set(range(steps_per_epoch - 1, total_steps, steps_per_epoch))
    if checkpoint_every:
        marks |= set(range(checkpoint_every - 1, total_steps, checkpoint_every))
    marks.add(total_steps - 1)
    return sorted(marks)


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
