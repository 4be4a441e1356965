"""Timing of a fixed per-worker op order: each worker runs its ops in order, one at a time; an op becomes
ready when its worker is free and every op it waits for has finished (plus that dependency's delay, e.g.
a transfer). With `cores`, the workers share that many cores: while k ops run, each advances at
min(1, cores / k) of its speed (processor sharing, as an OS time-slices runnable processes). The same
rule the stages follow, with costs in place of work."""
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
        rate = min(1.0, cores / len(running)) if running else 0.0
        step = min([left[w] / rate for w in running] + [t - now for t in ready_at])
        now += step
        for w in running:
            left[w] -= rate * step
            if left[w] <= EPS:
                done[workers[w][at[w]].key] = free[w] = now
                left[w] = None
                at[w] += 1
    return done
