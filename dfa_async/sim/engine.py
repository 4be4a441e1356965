"""Timing of a fixed per-worker op order: each worker runs its ops in order, one at a time; an op starts
when its worker is free and every op it waits for has finished (plus that dependency's delay, e.g. a
transfer). Deterministic list scheduling: the same rule the stages follow, with costs in place of work."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Op:
    key: tuple                 # unique over all workers, e.g. ("F", step, stage)
    seconds: float             # time the op keeps its worker busy
    after: list[tuple[tuple, float]] = field(default_factory=list)  # (key of an op, delay after it ends)


def finish_times(workers: list[list[Op]]) -> dict[tuple, float]:
    """End time of every op. Raises if the orders deadlock (an op waits for one that can never run)."""
    done: dict[tuple, float] = {}
    free = [0.0] * len(workers)
    at = [0] * len(workers)
    remaining = sum(len(w) for w in workers)
    while remaining:
        progressed = False
        for w, ops in enumerate(workers):
            while at[w] < len(ops):
                op = ops[at[w]]
                if any(k not in done for k, _ in op.after):
                    break
                start = max([free[w]] + [done[k] + d for k, d in op.after])
                free[w] = done[op.key] = start + op.seconds
                at[w] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            stuck = [ops[at[w]].key for w, ops in enumerate(workers) if at[w] < len(ops)]
            raise ValueError(f"the op orders deadlock; waiting: {stuck}")
    return done
