"""Where a replica's step goes: the bench's two-block tanh model as one stage, its forward and update op
times (median over the timed steps, from the stages' own timestamps) single-process on the whole batch and
on half of it, then as 1 stage x 2 replicas on Ray, each replica on half the batch. The replica's update
beyond the half-batch update alone is, mostly, the sum of the gradients over the replicas.

    python examples/replica_ops.py                 # 1024 wide, batch 256 (docs/benchmarks.md)
    python examples/replica_ops.py --width 64 --batch 16 --steps 10
"""
from __future__ import annotations

import argparse
import copy
import statistics

from dfa_async import process, windows
from dfa_async.perf.modes import setup
from dfa_async.reference import LocalPipeline
from dfa_async.runtime import RayPipeline, cluster

WARMUP = 5


def medians(timelines: list, i: int) -> tuple[float, float]:
    """Median ms of actor i's forward and update ops after the warm-up."""
    out = []
    for kind in ("forward", "update"):
        out.append(1e3 * statistics.median(b - a for w in timelines for o, t, a, b, _ in w[i]
                                           if o == kind and t >= WARMUP))
    return out[0], out[1]


def run(pipe, steps: int) -> list:
    timelines = []
    windows.drive(pipe, 0, WARMUP + steps, fixed=WARMUP, on_window=lambda w: timelines.append(w.timelines))
    return timelines


def main(argv=None) -> list[tuple[str, float, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args(argv)
    process.setup(1)  # one thread, as each stage has
    rows = []
    for batch in (args.batch, args.batch // 2):
        _, plan, ds = setup(args.width, batch, 1, 2, WARMUP, args.steps)
        plan.stage_sizes = [plan.num_blocks]
        rows.append((f"one process, {batch} rows", *medians(run(LocalPipeline(plan, None, ds, "cpu"), args.steps), 0)))
    _, plan, ds = setup(args.width, args.batch, 1, 2, WARMUP, args.steps)
    plan = copy.deepcopy(plan)
    plan.stage_sizes, plan.cfg.runtime.replicas = [plan.num_blocks], 2
    cluster.start_local(2)
    try:
        pipe = RayPipeline(plan, ds)
        try:
            timelines = run(pipe, args.steps)
        finally:
            pipe.close()
    finally:
        cluster.shutdown()
    rows += [(f"replica {r} of 2, {args.batch // 2} rows", *medians(timelines, r)) for r in range(2)]
    print(f"{args.width}-wide model, one stage; median ms over {args.steps} steps")
    print(f"{'':<28} {'forward':>8} {'update':>8}")
    for name, f, u in rows:
        print(f"{name:<28} {f:>8.2f} {u:>8.2f}")
    return rows


if __name__ == "__main__":
    main()
