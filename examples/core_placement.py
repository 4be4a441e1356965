"""Which core each stage of the data plane runs on, sampled while it trains: how often two stages share a
core, and how often each moves (Linux only: reads /proc/<pid>/stat).

The simulator's core model (dfa_async/sim/engine.py) rests on what this prints when the stages outnumber
the cores: a stage stays on one core's run queue for long stretches (few moves a second), and pipeline
neighbours share a core more often than other pairs (the kernel wakes a process near the one that woke
it).

    python examples/core_placement.py --stages 8 --depth 3 --width 1024 --steps 150

The sampler is a thread of the driver, reading each stage's last core every --every seconds; it takes a
little of a core itself, so the stages run a few percent slower than in the bench."""
from __future__ import annotations

import argparse
import threading
import time

import ray

from dfa_async.perf import bench
from dfa_async.runtime import RayPipeline


def last_core(pid: int) -> int:
    """The core a process last ran on: field 39 of /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[36])


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
    ap.add_argument("--every", type=float, default=0.001, help="seconds between samples")
    args = ap.parse_args(argv)
    _, plan, ds = bench.setup(args.width, args.batch, 1, args.stages, 5, args.steps, blocks=args.blocks)
    plan.cfg.runtime.depth = args.depth
    pipe = RayPipeline(plan, ds)
    try:
        pids = ray.get([actor.pid.remote() for actor in pipe.actors])
        bench.drive(pipe, 0, 5)
        samples, done = [], threading.Event()

        def sample():
            while not done.is_set():
                samples.append([last_core(pid) for pid in pids])
                time.sleep(args.every)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            secs, _ = bench.drive(pipe, 5, 5 + args.steps)
        finally:
            done.set()
            sampler.join()
    finally:
        pipe.close()
    out = summarize(samples, secs)
    out["steps_per_s"] = args.steps / secs
    print(f"{args.stages} stages at depth {args.depth}, {args.width}-wide: {out['steps_per_s']:.1f} steps/s, "
          f"{out['samples']} samples\nfraction of the time two stages shared a core:")
    for row in out["same_core"]:
        print(" ".join(f"{x:.2f}" for x in row))
    if out["others"] is not None:
        print(f"neighbours (s, s + 1): {out['neighbours']:.2f}; other pairs: {out['others']:.2f}")
    print("moves per second:", " ".join(f"{x:.1f}" for x in out["moves_per_s"]))
    return out


if __name__ == "__main__":
    main()
