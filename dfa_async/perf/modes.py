"""The bench's measurements, each timed at the driver on the same model and minibatches: backprop in one
process, the single-process reference, the machine's ceiling (every stage computing alone at once), a
pipeline driven in windows as the trainer drives it, the backprop baselines on Ray workers, paired ratios
timed in alternating chunks, and the tiny-model runs that calibrate the simulator."""
from __future__ import annotations

import copy
import math
import os
import time

import torch

from .. import config as config_mod, data, partition, process, windows
from ..balance import Solo
from ..baselines.local import Backprop
from ..reference import LocalPipeline
from ..stage import Plan
from .machine import sync
from .profile import block_profile


VOCAB = 65  # the bench's GPT: Tiny Shakespeare's characters


def bench_config(width: int, batch: int, threads: int, stages: int, steps: int,
                 blocks: int | None = None, device: str = "cpu", gpus_per_stage: float = 1.0,
                 gpt: dict | None = None) -> config_mod.Config:
    """`stages` balanced stages of `blocks` (default: one per stage) width x width tanh blocks, the head
    with the last, SGD with momentum; one epoch of `steps` minibatches. `gpt` (n_layer, n_head, n_embd,
    block_size): instead that GPT (n_layer + 1 blocks) on random tokens, split evenly into the stages."""
    runtime = {"threads": threads, "device": device, "gpus_per_stage": gpus_per_stage}
    if gpt is not None:
        return config_mod.from_dict({
            "model": {"kind": "gpt", **gpt},
            "data": {"name": "synthetic", "classes": VOCAB, "n_train": batch * steps * gpt["block_size"] + 1,
                     "n_test": batch},
            "optim": {"name": "sgd", "lr": 1e-3, "momentum": 0.9},
            "train": {"batch_size": batch, "epochs": 1},
            "runtime": {**runtime, "blocks_per_stage": partition.even(gpt["n_layer"], stages)}})
    side = int(round(max(width, 0) ** 0.5))
    if width < 1 or side * side != width:
        raise ValueError(f"--width: {width} must be a positive square (the input is a 1 x s x s image)")
    if batch < 1 or steps < 1:
        raise ValueError(f"--batch, --steps: {batch}, {steps}; both must be >= 1")
    return config_mod.from_dict({
        "model": {"widths": [width] * (blocks or stages)},
        "data": {"name": "synthetic", "shape": [1, side, side], "n_train": batch * steps, "n_test": batch},
        "optim": {"name": "sgd", "lr": 1e-3, "momentum": 0.9},
        "train": {"batch_size": batch, "epochs": 1},
        "runtime": {**runtime, "blocks_per_stage": partition.even(blocks or stages, stages)},
    })


def setup(width: int, batch: int, threads: int, stages: int, warmup: int, steps: int, blocks: int | None = None,
          device: str = "cpu", gpus_per_stage: float = 1.0, gpt: dict | None = None):
    """Config, plan and dataset: warmup + steps minibatches, a drain after the warm-up and at the end."""
    cfg = bench_config(width, batch, threads, stages, warmup + steps, blocks, device, gpus_per_stage, gpt)
    if gpt is not None:
        ds = data.for_run(cfg)
        plan = Plan(cfg, ds.shape, ds.classes, warmup + steps, warmup + steps, window=ds.window)
        plan.boundaries = sorted({warmup - 1, warmup + steps - 1})
        return cfg, plan, ds
    g = torch.Generator().manual_seed(0)
    shape = (1, *cfg.data.shape[1:])
    n = batch * (warmup + steps)
    ds = data.Dataset(torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g),
                      torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g), 10)
    plan = Plan(cfg, shape, 10, total_steps=warmup + steps, steps_per_epoch=warmup + steps)
    plan.boundaries = sorted({warmup - 1, warmup + steps - 1})
    return cfg, plan, ds


def drive(pipe, start: int, stop: int, window: int = 0) -> tuple[float, list]:
    """Seconds to run steps start..stop-1 as the trainer's driver does (windows.drive), and the windows'
    timelines."""
    timelines = []
    t0 = time.perf_counter()
    windows.drive(pipe, start, stop, fixed=window, on_window=lambda win: timelines.append(win.timelines))
    return time.perf_counter() - t0, timelines


def busy_fractions(timelines: list) -> list[float]:
    """Per stage: time inside its ops over the span from its first op to its last (windows.busy)."""
    out = []
    for s in range(len(timelines[0])):
        busy, span = windows.busy([op for w in timelines for op in w[s]])
        out.append(round(busy / max(span, 1e-9), 3))
    return out


def measure_backprop(plan, ds, warmup: int, steps: int, fused: bool, threads: int = 1) -> float:
    """Steps/s of plain backprop over the same minibatches."""
    with process.threads(threads):
        bp = Backprop(plan, ds, fused, plan.cfg.runtime.device)
        bp.run(0, warmup)
        t0 = time.perf_counter()
        bp.run(warmup, warmup + steps)
        sync(plan.cfg.runtime.device)
        return steps / (time.perf_counter() - t0)


def alternate(runners: dict, warmup: int, steps: int, chunks: int, device: str) -> tuple[dict, int]:
    """Seconds of each runner (a function of a step range) over the same chunks of steps warmup..
    warmup + steps, the runners taking turns in each chunk, in their order or its reverse, so that a
    machine whose speed drifts during the bench (a shared host's does, by 10-20 % over minutes) slows
    all alike; best-of-rounds rates of modes timed minutes apart do not cancel that drift. Returns each
    runner's chunk times and the chunk size."""
    size = max(steps // chunks, 1)
    secs = {k: [] for k in runners}
    for i, a in enumerate(range(warmup, warmup + steps - size + 1, size)):
        for name in (list(runners) if i % 2 == 0 else list(runners)[::-1]):
            t0 = time.perf_counter()
            runners[name](a, a + size)
            sync(device)
            secs[name].append(time.perf_counter() - t0)
    return secs, size


def step_ratios(plan, ds, warmup: int, steps: int, threads: int, chunks: int = 8) -> dict:
    """The single-process DFA step's time over backprop's (with the stages' optimizer call, and as a user
    writes it), timed in alternating chunks of the same steps (`alternate`). Returns the ratios and each
    chunk's ratio to fused backprop."""
    plan.cfg.runtime.depth = 1
    device = plan.cfg.runtime.device
    with process.threads(threads):
        pipe = LocalPipeline(plan, None, ds, device)
        fused, plain = Backprop(plan, ds, True, device), Backprop(plan, ds, False, device)

        def dfa(a, b):
            pipe.collect(pipe.submit(a, b))

        runners = {"dfa": dfa, "fused": fused.run, "plain": plain.run}
        for run_ in runners.values():
            run_(0, warmup)
        secs, _ = alternate(runners, warmup, steps, chunks, device)
    return {"dfa_step_over_backprop_step": sum(secs["dfa"]) / sum(secs["fused"]),
            "dfa_step_over_plain_backprop_step": sum(secs["dfa"]) / sum(secs["plain"]),
            "dfa_step_over_backprop_step_chunks": [round(d / f, 4) for d, f in zip(secs["dfa"], secs["fused"])]}


def paired_speedup(plan, ds, depth: int, warmup: int, steps: int, threads: int, window: int,
                   chunks: int = 6) -> dict:
    """Steps/s of the data plane at `depth` over the single-process reference's, both kept alive and
    timed in alternating chunks of the same steps (`alternate`): the modes' best-of-rounds rates are
    taken minutes apart, and on a shared host consecutive runs of one mode differ by 5-10 %. While one
    runs the other waits without a core (the stages block in their next Ray call). Returns the ratio of
    the summed times, both rates and each chunk's ratio."""

    from ..runtime import RayPipeline

    ref_plan = copy.deepcopy(plan)
    ref_plan.cfg.runtime.depth = 1
    plan.cfg.runtime.depth = depth
    ref = LocalPipeline(ref_plan, None, ds, plan.cfg.runtime.device)
    pipe = RayPipeline(plan, ds)
    runners = {"ref": lambda a, b: drive(ref, a, b, window), "pipe": lambda a, b: drive(pipe, a, b, window)}
    try:
        with process.threads(threads):
            for run_ in runners.values():
                run_(0, warmup)
            secs, size = alternate(runners, warmup, steps, chunks, plan.cfg.runtime.device)
    finally:
        pipe.close()
    timed = size * len(secs["ref"])
    return {"depth": depth, "speedup": sum(secs["ref"]) / sum(secs["pipe"]),
            "reference_steps_per_s": timed / sum(secs["ref"]), "dataplane_steps_per_s": timed / sum(secs["pipe"]),
            "chunks": [round(r / q, 4) for r, q in zip(secs["ref"], secs["pipe"])]}


def measure_reference(plan, ds, warmup: int, steps: int, threads: int, window: int) -> float:
    plan.cfg.runtime.depth = 1
    with process.threads(threads):
        return measure_pipeline(lambda: LocalPipeline(plan, None, ds, plan.cfg.runtime.device), warmup, steps,
                                window)[0]


def measure_group(kind: str, plan, ds, warmup: int, steps: int, microbatches: int) -> float:
    """Steps/s of a backprop baseline on N Ray workers, timed at the driver as the DFA runtime is."""
    from ..baselines import BackpropGroup

    group = BackpropGroup(kind, plan, ds, microbatches, workers=len(plan.partition()))
    try:
        group.run(0, warmup)
        t0 = time.perf_counter()
        group.run(warmup, warmup + steps)
        return steps / (time.perf_counter() - t0)
    finally:
        group.close()


def tiny_runs(batch: int, threads: int, stages: list[int], depths: list[int], transport: str,
              microbatches: list[int], baselines: bool, warmup: int, steps: int) -> dict:
    """For the simulator: the data plane (every depth) and, with the baselines, GPipe and 1F1B, on a tiny
    model (16-wide blocks: ops of microseconds) on one worker and on every N of the sweep, with the tiny
    model's block profile. What N workers add to one is then the cost of their messages: the software
    around each (torch.distributed.pipelining's, the stages' own) and, with more workers than cores, the
    wake-up of a worker that slept waiting for it. The simulator fits it here, per mode and N, and applies
    it to the measured model (`sim.message_costs`)."""
    from ..runtime import RayPipeline

    out = {}
    for n in sorted({1, *stages}):
        _, plan, ds = setup(16, batch, threads, n, warmup, steps)
        plan.cfg.runtime.transport = transport
        rec: dict = {"blocks": block_profile(plan, microbatches if baselines else (), n),
                     "partition": plan.stage_sizes, "slowdown": 1.0}
        for d in depths:
            plan.cfg.runtime.depth = d
            rec[f"dataplane-D{d}"] = batch * measure_pipeline(lambda: RayPipeline(plan, ds), warmup, steps,
                                                              plan.cfg.runtime.window)[0]
        for kind in ("gpipe", "1f1b") if baselines else ():
            for m in microbatches:
                if kind == "gpipe" or m >= n:
                    rec[f"{kind}-M{m}"] = batch * measure_group(kind, plan, ds, warmup, steps, m)
        out[str(n)] = rec
    return out


def measure_pipeline(make, warmup: int, steps: int, window: int) -> tuple[float, list[float] | None]:
    pipe = make()
    try:
        drive(pipe, 0, warmup, window)
        secs, timelines = drive(pipe, warmup, warmup + steps, window)
    finally:
        pipe.close()
    busy = busy_fractions(timelines) if len(timelines[0]) > 1 else None
    return steps / secs, busy


class _OwnLoop(Solo):
    """A stage stepping alone on its own data, in its own Ray actor (for the ceiling)."""

    def __init__(self, plan, ids, threads):
        process.setup(threads)
        super().__init__(plan, ids, plan.cfg.runtime.device, seed=ids[0])

    def pid(self) -> int:
        return os.getpid()


CEILING_MIN_S = 2.0  # the ceiling is timed over at least this long (its steps are cheap: no transfers)


def measure_ceiling(plan, warmup: int, steps: int) -> float:
    """The machine's ceiling for this partition: every stage computing at once, with no transfers and
    no waiting (what N stages could give if communication were free)."""
    import ray

    rt = plan.cfg.runtime
    cls = ray.remote(num_cpus=1, num_gpus=rt.gpus_per_stage if rt.device == "cuda" else 0)(_OwnLoop)
    loops = [cls.remote(plan, ids, plan.cfg.runtime.threads) for ids in plan.partition()]
    try:
        ray.get([lp.steps.remote(warmup) for lp in loops])
        secs = ray.get([lp.steps.remote(steps) for lp in loops])
        if max(secs) < CEILING_MIN_S:  # short runs of N processes sharing cores vary a lot: time longer
            steps = math.ceil(steps * CEILING_MIN_S / max(secs))
            secs = ray.get([lp.steps.remote(steps) for lp in loops])
    finally:
        for lp in loops:
            ray.kill(lp)
    return steps / max(secs)
