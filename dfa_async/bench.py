"""Speed, measured side by side in one run: plain PyTorch backprop, the single-process reference DFA,
and the layer-parallel Ray trainer synchronous (D = 1) and pipelined (D > 1), on the same balanced
model. A program, not a test: it prints samples/s and ratios, and writes JSON and a Markdown table."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import config as config_mod, schedule
from .reference import LocalPipeline
from .stage import Plan


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


def run(width: int = 4096, batch: int = 256, threads: int = 1, stages: int = 2, depths=(1, 2, 3, 4),
        warmup: int = 5, steps: int = 30, out: Path | None = None, transport: str = "object_store") -> list[dict]:
    cfg = bench_config(width, batch, threads, stages)
    plan = Plan(cfg, (1, *cfg.data.shape[1:]), 10, total_steps=10 ** 6, steps_per_epoch=10 ** 6)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *plan.in_shape, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    records = []

    def record(mode, sps, **extra):
        records.append({"mode": mode, "samples_per_s": sps, **extra})
        print(f"{mode:<28} {sps:10.1f} samples/s", flush=True)

    record("pytorch-backprop", measure_backprop(cfg, plan, x, y, warmup, steps), threads=threads)
    local = LocalPipeline(plan)
    record("reference-dfa", measure_pipeline(local, x, y, 1, warmup, steps, lambda: None), threads=threads)

    import ray

    from .distributed import RayPipeline

    for depth in depths:
        cfg.runtime.depth = depth
        cfg.runtime.transport = transport
        pipe = RayPipeline(plan)
        try:
            box = {}
            # take_timelines is queued behind every update on every actor: a barrier that also
            # collects the timed steps' host timestamps.
            barrier = lambda: box.update(tl=pipe.take_timelines())  # noqa: E731
            sps = measure_pipeline(pipe, x, y, depth, warmup, steps, barrier)
            tl = box["tl"]
        finally:
            pipe.close()
        busy = [sum(e - s for _, _, s, e, _ in t) / max(t[-1][3] - t[0][2], 1e-9) for t in tl]
        record(f"ray-{stages}stages-D{depth}", sps, depth=depth, stages=stages, transport=transport,
               busy_fraction=[round(b, 3) for b in busy])
    if ray.is_initialized():
        ray.shutdown()
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
                "warmup": warmup, "torch": torch.__version__, "ray": ray.__version__,
                "machine": platform.platform(), "cpus": torch.get_num_threads()}
        (out / "bench.json").write_text(json.dumps({"meta": meta, "records": records}, indent=2))
        (out / "bench.md").write_text(table + "\n")
    return records


def markdown(records, width, batch, threads, stages, steps) -> str:
    lines = [f"{stages} stages x {width}-wide tanh blocks, batch {batch}, {threads} thread(s) per worker, "
             f"{steps} timed steps", "", "| mode | samples/s | vs reference DFA |", "|---|---:|---:|"]
    for r in records:
        lines.append(f"| {r['mode']} | {r['samples_per_s']:.1f} | {r['vs_reference_dfa']:.2f}x |")
    return "\n".join(lines)
