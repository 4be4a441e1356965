"""Timing of a fixed per-worker op order: each worker runs its ops in order, one at a time; an op becomes
ready when its worker is free and every op it waits for has finished (plus that dependency's delay, e.g.
a transfer). The same rule the stages follow, with costs in place of work.

With `cores` fewer than the workers, each worker keeps to one core, consecutive workers on the same one
(worker w of N on core w * cores // N), and while k of a core's workers run an op each advances at 1 / k
of its speed (processor sharing, as an OS time-slices runnable processes). Why: Linux keeps a process on
one core's run queue between load balances (measured here: 3-21 moves a second per stage), and wakes a
process near the one that woke it, so pipeline neighbours share a core more often than other pairs
(examples/core_placement.py). With a fractional number of cores all workers share them alike."""
from __future__ import annotations

from dataclasses import dataclass, field

EPS = 1e-12


@dataclass
class Op:
    key: tuple                 # unique over all workers, e.g. ("F", step, stage)
    seconds: float             # time the op keeps its worker busy when it has a core to itself
    after: list[tuple[tuple, float]] = field(default_factory=list)  # (key of an op, delay after it ends)


def finish_times(workers: list[list[Op]], cores: float = float("inf")) -> dict[tuple, float]:
    """End time of every op. Raises if the orders deadlock (an op waits for one that can never run)."""
    n = len(workers)
    own = cores < n and float(cores).is_integer()  # whole cores, fewer than the workers
    core = [w * int(cores) // n if own else 0 for w in range(n)]
    capacity = 1.0 if own else min(cores, n)  # of each core, or of the one pool all workers share
    done: dict[tuple, float] = {}
    at = [0] * len(workers)
    left: list[float | None] = [None] * len(workers)  # remaining work of the running op
    free = [0.0] * len(workers)  # when each worker finished its previous op
    now = 0.0
    while any(a < len(w) for a, w in zip(at, workers)):
        ready_at = []
        for w, ops in enumerate(workers):
            if left[w] is None and at[w] < len(ops):
                op = ops[at[w]]
                if all(k in done for k, _ in op.after):
                    t = max([free[w]] + [done[k] + d for k, d in op.after])
                    if t <= now + EPS:
                        left[w] = op.seconds
                    else:
                        ready_at.append(t)
        running = [w for w in range(len(workers)) if left[w] is not None]
        if not running and not ready_at:
            stuck = [ops[at[w]].key for w, ops in enumerate(workers) if at[w] < len(ops)]
            raise ValueError(f"the op orders deadlock; waiting: {stuck}")
        on: dict[int, int] = {}
        for w in running:
            on[core[w]] = on.get(core[w], 0) + 1
        rate = {w: min(1.0, capacity / on[core[w]]) for w in running}
        step = min([left[w] / rate[w] for w in running] + [t - now for t in ready_at])
        now += step
        for w in running:
            left[w] -= rate[w] * step
            if left[w] <= EPS:
                done[workers[w][at[w]].key] = free[w] = now
                left[w] = None
                at[w] += 1
    return done
