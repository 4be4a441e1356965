"""Which core each stage of the data plane runs on, sampled while it trains: how often two stages share a
core, and how often each moves (Linux only: reads /proc/<pid>/stat).

The simulator's core model (dfa_async/sim/engine.py) rests on what this prints when the stages outnumber
the cores: a stage stays on one core's run queue for long stretches (few moves a second), and pipeline
neighbours share a core more often than other pairs (the kernel wakes a process near the one that woke
it).

    python examples/core_placement.py --stages 8 --depth 3 --width 1024 --steps 150

The sampler is a thread of the driver, reading each stage's last core every --every seconds. Each of its
wake-ups preempts a stage: sampling every 1 ms slowed 8 stages on 2 cores from 21 to 15 steps/s (and
their CPU time per step by a third); every 20 ms (the default) they ran as in the bench.

It also splits what the pipeline loses against the bench's ceiling (the same stages computing on their
own, never waiting) into cores left idle and CPU time spent per step: each stage's time on a CPU per
step (/proc/<pid>/schedstat), in the pipeline and in the ceiling's loops, and the machine's idle
fraction during each (/proc/stat)."""
from __future__ import annotations

import argparse
import os
import threading
import time

import ray

from dfa_async.perf import machine, modes
from dfa_async.runtime import RayPipeline, cluster


def last_core(pid: int) -> int:
    """The core a process last ran on: field 39 of /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[36])


def cpu_seconds(pid: int) -> float:
    """Time the process has run on a CPU, all its threads: the first field of each thread's schedstat
    (nanoseconds; a thread that ends meanwhile takes its time with it)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass
    return total / 1e9


def ceiling_cpu(plan, steps: int) -> dict:
    """The ceiling's loops (as `modes.measure_ceiling` runs them) for `steps` steps: steps/s of the slowest,
    each loop's CPU seconds per step, and the machine's idle fraction meanwhile."""
    loops = [ray.remote(num_cpus=1)(modes._OwnLoop).remote(plan, ids, 1) for ids in plan.partition()]
    try:
        pids = ray.get([lp.pid.remote() for lp in loops])
        ray.get([lp.steps.remote(5) for lp in loops])
        cpu0, idle0 = [cpu_seconds(p) for p in pids], machine.machine_ticks()
        secs = ray.get([lp.steps.remote(steps) for lp in loops])
        cpu1, idle1 = [cpu_seconds(p) for p in pids], machine.machine_ticks()
    finally:
        for lp in loops:
            ray.kill(lp)
    return {"steps_per_s": steps / max(secs), "cpu_ms_per_step": [(b - a) / steps * 1e3 for a, b in zip(cpu0, cpu1)],
            "idle": machine.idle_between(idle0, idle1)}


def summarize(samples: list[list[int]], seconds: float) -> dict:
    """From per-sample cores of N stages: the fraction of samples each pair shared a core, its mean over
    neighbours (stages s and s + 1) and over the other pairs, and each stage's moves per second."""
    n, m = len(samples[0]), len(samples)
    same = [[sum(row[i] == row[j] for row in samples) / m for j in range(n)] for i in range(n)]
    near = [same[i][i + 1] for i in range(n - 1)]
    far = [same[i][j] for i in range(n) for j in range(i + 2, n)]
    moves = [sum(a[i] != b[i] for a, b in zip(samples, samples[1:])) / seconds for i in range(n)]
    return {"same_core": same, "neighbours": sum(near) / len(near) if near else None,
            "others": sum(far) / len(far) if far else None, "moves_per_s": moves, "samples": m}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stages", type=int, default=8)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--width", type=int, default=1024, help="a square (the bench's model)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--blocks", type=int, default=8, help="blocks of the model, split into --stages stages")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--every", type=float, default=0.02, help="seconds between samples (see above)")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the ceiling's loops")
    args = ap.parse_args(argv)
    _, plan, ds = modes.setup(args.width, args.batch, 1, args.stages, 5, args.steps, blocks=args.blocks)
    plan.cfg.runtime.depth = args.depth
    started = not ray.is_initialized()  # one instance for the pipeline and then the ceiling's loops
    if started:
        cluster.start_local(args.stages)
    try:
        return _run(args, plan, ds)
    finally:
        if started:
            cluster.shutdown()


def _run(args, plan, ds) -> dict:
    pipe = RayPipeline(plan, ds)
    try:
        pids = ray.get([actor.pid.remote() for actor in pipe.actors])
        modes.drive(pipe, 0, 5)
        samples, done = [], threading.Event()

        def sample():
            while not done.is_set():
                samples.append([last_core(pid) for pid in pids])
                time.sleep(args.every)

        sampler = threading.Thread(target=sample)
        cpu0, idle0 = [cpu_seconds(p) for p in pids], machine.machine_ticks()
        sampler.start()
        try:
            secs, _ = modes.drive(pipe, 5, 5 + args.steps)
        finally:
            done.set()
            sampler.join()
        cpu1, idle1 = [cpu_seconds(p) for p in pids], machine.machine_ticks()
    finally:
        pipe.close()
    out = summarize(samples, secs)
    out["steps_per_s"] = args.steps / secs
    out["cpu_ms_per_step"] = [(b - a) / args.steps * 1e3 for a, b in zip(cpu0, cpu1)]
    out["idle"] = machine.idle_between(idle0, idle1)
    out["ceiling"] = None if args.no_ceiling else ceiling_cpu(plan, args.steps)
    print(f"{args.stages} stages at depth {args.depth}, {args.width}-wide: {out['steps_per_s']:.1f} steps/s, "
          f"{out['samples']} samples\nfraction of the time two stages shared a core:")
    for row in out["same_core"]:
        print(" ".join(f"{x:.2f}" for x in row))
    if out["others"] is not None:
        print(f"neighbours (s, s + 1): {out['neighbours']:.2f}; other pairs: {out['others']:.2f}")
    print("moves per second:", " ".join(f"{x:.1f}" for x in out["moves_per_s"]))
    runs = [("pipeline", out)] + ([("ceiling", out["ceiling"])] if out["ceiling"] else [])
    for name, r in runs:
        print(f"{name}: {r['steps_per_s']:.1f} steps/s, cores idle {r['idle']:.1%}, CPU ms per step by stage "
              + " ".join(f"{x:.2f}" for x in r["cpu_ms_per_step"]) + f" (all: {sum(r['cpu_ms_per_step']):.2f})")
    return out


if __name__ == "__main__":
    main()
