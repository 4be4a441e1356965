"""Speed, measured side by side in one run: plain PyTorch backprop, the single-process reference DFA,
the machine's ceiling (every stage computing at once with no transfers), and the layer-parallel Ray
trainer synchronous (D = 1) and pipelined (D > 1), on the same balanced model. A program, not a test: it prints samples/s and ratios, and writes JSON and a Markdown table."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import config as config_mod, schedule
from .reference import LocalPipeline
from .stage import Plan, Stage, keep_freed_memory


def bench_config(width: int, batch: int, threads: int, stages: int) -> config_mod.Config:
    """`stages` balanced stages: each holds one width x width tanh block (the last also the head)."""
    side = int(round(width ** 0.5))
    if side * side != width:
        raise ValueError(f"--width: {width} must be a square (the input is a 1 x s x s image)")
    return config_mod.from_dict({
        "model": {"widths": [width] * stages},
        "data": {"name": "synthetic", "shape": [1, side, side]},
        "optim": {"name": "sgd", "lr": 1e-3, "momentum": 0.9},
        "train": {"batch_size": batch},
        "runtime": {"threads": threads, "stages": [1] * (stages - 1) + [2]},
    })


def timed_steps(pipe, x, y, start: int, steps: int, depth: int, barrier) -> float:
    """Seconds for `steps` steps of the schedule (drained at the end; `barrier` waits for it)."""
    t0 = time.perf_counter()
    for op in schedule.ops(start, start + steps, depth):
        if op.kind == "forward":
            pipe.forward(op.step, x, y)
        elif op.kind == "update":
            pipe.update(op.step)
    barrier()
    return time.perf_counter() - t0


def measure_backprop(cfg, plan, x, y, warmup: int, steps: int) -> float:
    torch.set_num_threads(cfg.runtime.threads)
    net = plan.build()
    opt = torch.optim.SGD(net.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * len(x) / (time.perf_counter() - t0)


def measure_pipeline(pipe, x, y, depth: int, warmup: int, steps: int, barrier) -> float:
    timed_steps(pipe, x, y, 0, warmup, depth, barrier)
    return steps * len(x) / timed_steps(pipe, x, y, warmup, steps, depth, barrier)


def measure_ray(plan, x, y, depth, transport, warmup, steps) -> tuple[float, list[float]]:
    from .distributed import RayPipeline

    plan.cfg.runtime.depth = depth
    plan.cfg.runtime.transport = transport
    pipe = RayPipeline(plan)
    try:
        box = {}
        # take_timelines is queued behind every update on every actor: a barrier that also collects
        # the timed steps' host timestamps.
        barrier = lambda: box.update(tl=pipe.take_timelines())  # noqa: E731
        sps = measure_pipeline(pipe, x, y, depth, warmup, steps, barrier)
    finally:
        pipe.close()
    busy = [sum(e - s for _, _, s, e, _ in t) / max(t[-1][3] - t[0][2], 1e-9) for t in box["tl"]]
    return sps, [round(b, 3) for b in busy]


class _OwnLoop:
    """One stage's forward + update on its own random data, with no dependency on other stages."""

    def __init__(self, plan, ids, in_shape, threads):
        torch.set_num_threads(threads)
        self.stage = Stage(plan, ids)
        g = torch.Generator().manual_seed(ids[0])
        self.x = torch.randn(plan.cfg.train.batch_size, *in_shape, generator=g)
        self.y = torch.randint(0, plan.classes, (len(self.x),), generator=g)
        self.e = torch.randn(len(self.x), plan.classes, generator=g) / len(self.x)
        self.t = 0

    def steps(self, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            self.stage.forward(self.t, self.x, self.y)
            self.stage.update(self.t, self.e)
            self.t += 1
        return time.perf_counter() - t0


def measure_ceiling(plan, warmup, steps) -> float:
    """The machine's ceiling for this partition: every stage computing at once, with no transfers and
    no waiting (what N stages could give if communication were free)."""
    import ray

    shapes = [plan.in_shape] + plan.out_shapes
    cls = ray.remote(num_cpus=1)(_OwnLoop)
    loops = [cls.remote(plan, ids, shapes[ids[0]], plan.cfg.runtime.threads) for ids in plan.partition()]
    try:
        ray.get([lp.steps.remote(warmup) for lp in loops])
        secs = ray.get([lp.steps.remote(steps) for lp in loops])
    finally:
        for lp in loops:
            ray.kill(lp)
    return steps * plan.cfg.train.batch_size / max(secs)


def run(width: int = 4096, batch: int = 256, threads: int = 1, stages: int = 2, depths=(1, 2, 3),
        warmup: int = 5, steps: int = 30, out: Path | None = None, transport: str = "object_store",
        repeats: int = 2) -> list[dict]:
    """Every mode `repeats` times, in rounds (so drift on a shared machine hits all modes alike);
    each mode reports its best round."""
    import ray

    keep_freed_memory()  # as every stage does, so the anchors run under the same allocator
    cfg = bench_config(width, batch, threads, stages)
    plan = Plan(cfg, (1, *cfg.data.shape[1:]), 10, total_steps=10 ** 6, steps_per_epoch=10 ** 6)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *plan.in_shape, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=stages, include_dashboard=False, log_to_driver=False, configure_logging=False)
    modes = {"pytorch-backprop": lambda: (measure_backprop(cfg, plan, x, y, warmup, steps), None),
             "reference-dfa": lambda: (measure_pipeline(LocalPipeline(plan), x, y, 1, warmup, steps,
                                                        lambda: None), None)}
    modes["ceiling-independent-stages"] = lambda: (measure_ceiling(plan, warmup, steps), None)
    for depth in depths:
        modes[f"ray-{stages}stages-D{depth}"] = (
            lambda d=depth: measure_ray(plan, x, y, d, transport, warmup, steps))
    runs: dict[str, list] = {m: [] for m in modes}
    try:
        for r in range(repeats):
            for mode, fn in modes.items():
                sps, busy = fn()
                runs[mode].append((sps, busy))
                print(f"round {r + 1}  {mode:<24} {sps:10.1f} samples/s"
                      + (f"  busy {busy}" if busy else ""), flush=True)
    finally:
        if started:
            ray.shutdown()
    records = []
    for mode, results in runs.items():
        sps, busy = max(results, key=lambda t: t[0])
        rec = {"mode": mode, "samples_per_s": sps, "rounds": [round(s, 2) for s, _ in results], "threads": threads}
        if mode.startswith("ray"):
            rec.update(depth=int(mode.rsplit("D", 1)[1]), stages=stages, transport=transport, busy_fraction=busy)
        records.append(rec)
    base = next(r["samples_per_s"] for r in records if r["mode"] == "reference-dfa")
    for r in records:
        r["vs_reference_dfa"] = r["samples_per_s"] / base
    best = max((r for r in records if r["mode"].startswith("ray")), key=lambda r: r["samples_per_s"])
    table = markdown(records, width, batch, threads, stages, steps)
    print(table)
    print(f"best pipelined / reference DFA: {best['vs_reference_dfa']:.2f}x (physical limit {stages}x)")
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"width": width, "batch": batch, "threads": threads, "stages": stages, "steps": steps,
                "warmup": warmup, "repeats": repeats, "torch": torch.__version__, "ray": ray.__version__,
                "machine": platform.platform(), "cpus": os.cpu_count()}
        (out / "bench.json").write_text(json.dumps({"meta": meta, "records": records}, indent=2))
        (out / "bench.md").write_text(table + "\n")
    return records


def markdown(records, width, batch, threads, stages, steps) -> str:
    lines = [f"{stages} stages x {width}-wide tanh blocks, batch {batch}, {threads} thread(s) per worker, "
             f"{steps} timed steps, best of the rounds", "",
             "| mode | samples/s | vs reference DFA |", "|---|---:|---:|"]
    for r in records:
        lines.append(f"| {r['mode']} | {r['samples_per_s']:.1f} | {r['vs_reference_dfa']:.2f}x |")
    return "\n".join(lines)
