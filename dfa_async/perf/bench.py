"""Speed, measured side by side in one run on the same balanced model and the same minibatches:

- `pytorch-backprop`: plain PyTorch backprop in one process, as a user writes it (default optimizer);
- `backprop-fused-opt`: the same with the optimizer kernels the stages use (`optim.fused`), so that its
  ratio to `reference-dfa` compares the learning rules alone;
- `reference-dfa`: the single-process reference (every block in one process);
- `ceiling-independent-stages`: every stage computing at once with no transfers and no waiting;
- `dataplane-D{d}`: the layer-parallel runtime (stages running windows, tensors over the data plane);
- `raycalls-D{d}`: the per-op Ray-call pipeline it replaced (the overhead baseline);
- `gpipe-M{m}`, `1f1b-M{m}`: pipeline-parallel backprop (torch.distributed.pipelining) on the same N Ray
  workers, m microbatches per minibatch (several m: smaller microbatches fill the pipeline better but
  run each matrix product less efficiently; the best m is the baseline to beat);
- `ddp`: data-parallel backprop (DistributedDataParallel) on N Ray workers, each with batch/N samples;
- `backprop-threads{N}`, `reference-dfa-threads{N}`: the single process with N torch threads.

Over a list of worker counts N (`stages`), each N gets its own model of N balanced blocks (or, with
`fixed_blocks`, one model of that many blocks split into N stages). `speedup` is a mode's samples/s over
the single process, one thread, of the same rule on the same model (`reference-dfa` for DFA,
`backprop-fused-opt` for backprop): what N workers buy over one; `efficiency` is speedup / N.

A program, not a test: it prints samples/s, steps/s and ratios, and writes JSON, a Markdown table and a
plot. Every mode runs `repeats` times in rounds (drift on a shared machine hits all modes alike) and
reports its best round."""
from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import config as config_mod, data, optim
from ..reference import LocalPipeline
from ..run import Windows
from ..runtime import shm
from ..stage import Plan, Stage, keep_freed_memory
from . import link
from .profile import block_profile, fastest

MODES_FIXED = ("pytorch-backprop", "backprop-fused-opt", "reference-dfa", "ceiling-independent-stages")


def split(blocks: int, stages: int) -> list[int]:
    """Blocks per stage for `blocks` equal hidden blocks and the (small) head on `stages` stages: as even
    as it goes, the head with the last stage."""
    if not 1 <= stages <= blocks:
        raise ValueError(f"--stages: {stages} stages for a model of {blocks} blocks; use 1 to {blocks}")
    sizes = [blocks // stages + (i < blocks % stages) for i in range(stages)][::-1]
    sizes[-1] += 1
    return sizes


def bench_config(width: int, batch: int, threads: int, stages: int, steps: int,
                 blocks: int | None = None, device: str = "cpu", gpus_per_stage: float = 1.0) -> config_mod.Config:
    """`stages` balanced stages of `blocks` (default: one per stage) width x width tanh blocks, the head
    with the last, SGD with momentum; one epoch of `steps` minibatches."""
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
        "runtime": {"threads": threads, "stages": split(blocks or stages, stages), "device": device,
                    "gpus_per_stage": gpus_per_stage},
    })


def setup(width: int, batch: int, threads: int, stages: int, warmup: int, steps: int, blocks: int | None = None,
          device: str = "cpu", gpus_per_stage: float = 1.0):
    """Config, plan and dataset: warmup + steps minibatches, a drain after the warm-up and at the end."""
    cfg = bench_config(width, batch, threads, stages, warmup + steps, blocks, device, gpus_per_stage)
    g = torch.Generator().manual_seed(0)
    shape = (1, *cfg.data.shape[1:])
    n = batch * (warmup + steps)
    ds = data.Dataset(torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g),
                      torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g), 10)
    plan = Plan(cfg, shape, 10, total_steps=warmup + steps, steps_per_epoch=warmup + steps)
    plan.boundaries = sorted({warmup - 1, warmup + steps - 1})
    return cfg, plan, ds


def drive(pipe, start: int, stop: int, window: int = 0) -> tuple[float, list]:
    """Seconds to run steps start..stop-1 as the trainer's driver does (windows sized alike, the next
    queued behind the running one), and the windows' timelines."""
    t0 = time.perf_counter()
    running, timelines, windows = None, [], Windows(start, stop, (), window)
    for a, b in windows:
        handle = pipe.submit(a, b)
        if running is not None:
            win = pipe.collect(running)
            windows.measured(win)
            timelines.append(win.timelines)
        running = handle
    timelines.append(pipe.collect(running).timelines)
    return time.perf_counter() - t0, timelines


def busy_fractions(windows: list) -> list[float]:
    """Per stage: time inside its ops over the span from its first op to its last."""
    out = []
    for s in range(len(windows[0])):
        ops = [op for w in windows for op in w[s]]
        busy = sum(end - start for _, _, start, end, _ in ops)
        out.append(round(busy / max(ops[-1][3] - ops[0][2], 1e-9), 3))
    return out


def backprop_stepper(plan, ds, fused: bool):
    """One plain backprop step over step t's minibatch: `optim.step` (the stages' optimizer call) when
    `fused`, else PyTorch's SGD as a user writes it."""
    cfg = plan.cfg
    device = cfg.runtime.device
    net = plan.build().to(device)
    if fused:
        opt = optim.make(list(net.parameters()), cfg.optim)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum)
    batches = data.Batches(len(ds.x_train), cfg.train.batch_size, cfg.train.seed)
    # The minibatches gathered where the DFA stages gather theirs (data.on_device).
    x, y = (data.resident(a, device, cfg.data.on_device) for a in (ds.x_train, ds.y_train))

    def step(t):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(batches.inputs(x, t).to(device)), batches.labels(y, t).to(device)).backward()
        optim.step(opt) if fused else opt.step()

    return step


def measure_backprop(plan, ds, warmup: int, steps: int, fused: bool, threads: int = 1) -> float:
    """Steps/s of plain backprop over the same minibatches."""
    torch.set_num_threads(threads)
    step = backprop_stepper(plan, ds, fused)
    for t in range(warmup):
        step(t)
    t0 = time.perf_counter()
    for t in range(warmup, warmup + steps):
        step(t)
    sync(plan.cfg.runtime.device)
    secs = time.perf_counter() - t0
    torch.set_num_threads(plan.cfg.runtime.threads)
    return steps / secs


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
    torch.set_num_threads(threads)
    plan.cfg.runtime.depth = 1
    pipe = LocalPipeline(plan, None, ds, plan.cfg.runtime.device)
    torch.set_num_threads(threads)
    fused, plain = backprop_stepper(plan, ds, True), backprop_stepper(plan, ds, False)

    def dfa(a, b):
        pipe.collect(pipe.submit(a, b))

    runners = {"dfa": dfa, "fused": lambda a, b: [fused(t) for t in range(a, b)],
               "plain": lambda a, b: [plain(t) for t in range(a, b)]}
    for run_ in runners.values():
        run_(0, warmup)
    try:
        secs, _ = alternate(runners, warmup, steps, chunks, plan.cfg.runtime.device)
    finally:
        pipe.close()
        torch.set_num_threads(plan.cfg.runtime.threads)
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
    import copy

    from ..runtime import RayPipeline

    ref_plan = copy.deepcopy(plan)
    ref_plan.cfg.runtime.depth = 1
    plan.cfg.runtime.depth = depth
    ref = LocalPipeline(ref_plan, None, ds, plan.cfg.runtime.device)  # it sets runtime.threads
    pipe = RayPipeline(plan, ds)
    torch.set_num_threads(threads)
    runners = {"ref": lambda a, b: drive(ref, a, b, window), "pipe": lambda a, b: drive(pipe, a, b, window)}
    try:
        for run_ in runners.values():
            run_(0, warmup)
        secs, size = alternate(runners, warmup, steps, chunks, plan.cfg.runtime.device)
    finally:
        pipe.close()
        torch.set_num_threads(plan.cfg.runtime.threads)
    timed = size * len(secs["ref"])
    return {"depth": depth, "speedup": sum(secs["ref"]) / sum(secs["pipe"]),
            "reference_steps_per_s": timed / sum(secs["ref"]), "dataplane_steps_per_s": timed / sum(secs["pipe"]),
            "chunks": [round(r / q, 4) for r, q in zip(secs["ref"], secs["pipe"])]}


def measure_reference(plan, ds, warmup: int, steps: int, threads: int, window: int) -> float:
    plan.cfg.runtime.depth = 1

    def make():
        pipe = LocalPipeline(plan, None, ds, plan.cfg.runtime.device)  # it sets runtime.threads
        torch.set_num_threads(threads)
        return pipe

    try:
        return measure_pipeline(make, warmup, steps, window)[0]
    finally:
        torch.set_num_threads(plan.cfg.runtime.threads)


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


def machine_ticks() -> tuple[int, int]:
    """This machine's idle (with iowait) and total CPU ticks so far (/proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return ticks[3] + ticks[4], sum(ticks)


def idle_between(a: tuple[int, int], b: tuple[int, int]) -> float:
    """Fraction of the CPU time between two `machine_ticks` readings spent idle."""
    return (b[0] - a[0]) / max(b[1] - a[1], 1)


def idle_fraction(span: float) -> float | None:
    """Fraction of this machine's CPU time spent idle over the next `span` seconds (None without
    /proc/stat)."""
    try:
        a = machine_ticks()
        time.sleep(span)
        b = machine_ticks()
    except OSError:
        return None
    return idle_between(a, b)


def wait_quiet(idle: float = 0.9, span: float = 1.0, limit: float = 30.0) -> bool:
    """Wait until the cores are at least `idle` idle over `span` seconds, at most `limit` seconds; True when
    they were. For ~2 s after a local Ray starts, its prestarted workers keep both cores of this machine
    half busy; a link measured then read 40x the latency of an idle machine."""
    deadline = time.monotonic() + limit
    while True:
        frac = idle_fraction(span)
        if frac is None or frac >= idle:
            return True
        if time.monotonic() >= deadline:
            return False


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class _OwnLoop:
    """One stage's forward + update on its own random data, with no dependency on other stages."""

    def __init__(self, plan, ids, in_shape, threads):
        torch.set_num_threads(threads)
        self.device = plan.cfg.runtime.device
        self.stage = Stage(plan, ids, device=self.device)
        g = torch.Generator().manual_seed(ids[0])
        self.x = torch.randn(plan.cfg.train.batch_size, *in_shape, generator=g).to(self.device)
        self.y = torch.randint(0, plan.classes, (len(self.x),), generator=g).to(self.device)
        self.e = (torch.randn(len(self.x), plan.classes, generator=g) / len(self.x)).to(self.device)
        self.t = 0

    def pid(self) -> int:
        return os.getpid()

    def steps(self, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            self.stage.forward(self.t, self.x, self.y)
            self.stage.update(self.t, self.e)
            self.t += 1
        sync(self.device)
        return time.perf_counter() - t0


CEILING_MIN_S = 2.0  # the ceiling is timed over at least this long (its steps are cheap: no transfers)


def measure_ceiling(plan, warmup: int, steps: int) -> float:
    """The machine's ceiling for this partition: every stage computing at once, with no transfers and
    no waiting (what N stages could give if communication were free)."""
    import ray

    shapes = [plan.in_shape] + plan.out_shapes
    rt = plan.cfg.runtime
    cls = ray.remote(num_cpus=1, num_gpus=rt.gpus_per_stage if rt.device == "cuda" else 0)(_OwnLoop)
    loops = [cls.remote(plan, ids, shapes[ids[0]], plan.cfg.runtime.threads) for ids in plan.partition()]
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


def measure(width: int, batch: int, threads: int, stages: int, depths, warmup: int, steps: int,
            transport: str, repeats: int, calls: bool, baselines: bool, microbatches: list[int],
            blocks: int | None = None, device: str = "cpu", gpus_per_stage: float = 1.0):
    """Every mode on N = `stages` workers, side by side in rounds; records and meta for this N."""

    from ..runtime import RayPipeline
    from .calls import CallsPipeline

    cfg, plan, ds = setup(width, batch, threads, stages, warmup, steps, blocks, device, gpus_per_stage)
    cfg.runtime.transport = transport
    window = cfg.runtime.window

    def with_depth(d, make):
        def go():
            plan.cfg.runtime.depth = d
            return measure_pipeline(lambda: make(plan, ds), warmup, steps, window)
        return go

    modes = {
        "pytorch-backprop": lambda: (measure_backprop(plan, ds, warmup, steps, False, threads), None),
        "backprop-fused-opt": lambda: (measure_backprop(plan, ds, warmup, steps, True, threads), None),
        "reference-dfa": lambda: (measure_reference(plan, ds, warmup, steps, threads, window), None),
    }
    if stages > 1 and device == "cpu":  # torch threads do not spread a GPU's kernels: no such mode there
        n = stages * threads
        modes[f"backprop-threads{n}"] = lambda: (measure_backprop(plan, ds, warmup, steps, True, n), None)
        modes[f"reference-dfa-threads{n}"] = lambda: (measure_reference(plan, ds, warmup, steps, n, window), None)
    modes["ceiling-independent-stages"] = lambda: (measure_ceiling(plan, warmup, steps), None)
    for d in depths:
        modes[f"dataplane-D{d}"] = with_depth(d, RayPipeline)
    if calls:
        for d in depths:
            modes[f"raycalls-D{d}"] = with_depth(d, CallsPipeline)
    if baselines:
        for kind in ("gpipe", "1f1b"):
            for m in microbatches:
                if kind == "1f1b" and m < stages:  # torch's 1F1B needs a microbatch per stage
                    continue
                modes[f"{kind}-M{m}"] = lambda kind=kind, m=m: (measure_group(kind, plan, ds, warmup, steps, m), None)
        modes["ddp"] = lambda: (measure_group("ddp", plan, ds, warmup, steps, 1), None)
    runs: dict[str, list] = {m: [] for m in modes}
    rounds_profiled = []  # for the simulator, timed in every round as the modes are
    for r in range(repeats):
        for mode, fn in modes.items():
            sps, busy = fn()
            runs[mode].append((sps, busy))
            print(f"N={stages} round {r + 1}  {mode:<28} {sps:10.1f} steps/s  {sps * batch:10.1f} samples/s"
                  + (f"  busy {busy}" if busy else ""), flush=True)
        if device == "cpu":
            rounds_profiled.append(block_profile(plan, microbatches, stages))
    records = []
    for mode, results in runs.items():
        sps, busy = max(results, key=lambda t: t[0])
        rec = {"mode": mode, "workers": stages, "steps_per_s": sps, "samples_per_s": sps * batch,
               "ms_per_step": 1e3 / sps, "rounds": [round(s, 2) for s, _ in results], "threads": threads}
        if "-D" in mode:
            rec.update(depth=int(mode.rsplit("D", 1)[1]), stages=stages, busy_fraction=busy)
        records.append(rec)
    by = {r["mode"]: r for r in records}
    base, ceiling = by["reference-dfa"]["steps_per_s"], by["ceiling-independent-stages"]["steps_per_s"]
    bp = by["backprop-fused-opt"]["steps_per_s"]
    for r in records:
        r["vs_reference_dfa"] = r["steps_per_s"] / base
        r["vs_ceiling"] = r["steps_per_s"] / ceiling
        dfa = r["mode"].startswith(("reference-dfa", "ceiling", "dataplane", "raycalls"))
        r["speedup"] = r["steps_per_s"] / (base if dfa else bp)
        r["efficiency"] = r["speedup"] / stages
        if "-D" in r["mode"]:  # what the transfers and the waiting add to a step, beyond the stages' compute
            r["overhead_ms_per_step"] = r["ms_per_step"] - 1e3 / ceiling
    # The best depth against the reference, paired in time (see paired_speedup). Not on a GPU: a lent
    # machine's minutes are few, and a new pipeline there costs every stage a CUDA start.
    paired = None
    if stages > 1 and device == "cpu":
        best = max((r for r in records if r["mode"].startswith("dataplane-D")), key=lambda r: r["steps_per_s"])
        paired = paired_speedup(plan, ds, best["depth"], warmup, steps, threads, window)
    meta = {"width": width, "batch": batch, "threads": threads, "stages": stages, "blocks": plan.num_blocks,
            "device": device, "gpus_per_stage": gpus_per_stage,
            "partition": cfg.runtime.stages, "steps": steps, "warmup": warmup, "repeats": repeats,
            "window": window, "transport": transport, "microbatches": microbatches,
            # Time of a single-process DFA step over a backprop step of the same model and batch.
            **step_ratios(plan, ds, warmup, steps, threads)}
    if paired:
        meta["dataplane_over_reference_paired"] = paired
    if device != "cpu":  # the simulator's profile is of CPU workers
        return records, meta, None
    # For the simulator: per-block costs, measured alone (each its best round, as for the modes), and how
    # much slower N stages compute at once.
    blocks = fastest(rounds_profiled)
    alone = max(sum(blocks[k]["dfa_forward_s"] + blocks[k]["dfa_update_s"] for k in ids) for ids in plan.partition())
    profile = {"blocks": blocks, "partition": plan.stage_sizes, "slowdown": (1 / ceiling) / alone,
               "transport": "shm" if transport in ("auto", "shm") and shm.available() and stages > 1 else "gloo"}
    return records, meta, profile


def run(width: int = 4096, batch: int = 256, threads: int = 1, stages=(2,), depths=(1, 2, 3),
        warmup: int = 5, steps: int = 30, out: Path | None = None, transport: str = "auto",
        repeats: int = 2, calls: bool = True, baselines: bool = True, microbatches=(2, 4),
        fixed_blocks: int | None = None, device: str = "cpu", gpus_per_stage: float = 1.0,
        tiny: bool = True) -> list[dict]:
    """The bench over every N in `stages`; all records (each with its `workers` = N). `tiny`: also the
    tiny-model runs that calibrate the simulator (CPU workers, N > 1)."""
    import ray

    from ..runtime import cluster

    stages = [stages] if isinstance(stages, int) else list(stages)
    for n in stages:  # every setting checked before anything runs
        bench_config(width, batch, threads, n, warmup + steps, fixed_blocks, device, gpus_per_stage)
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: cuda, but this process sees no GPU; use cpu")
    if device == "cuda":
        calls = False  # the per-op Ray-call baseline runs on CPUs only
        baselines = baselines and gpus_per_stage == 1  # torch's pipelines and DDP use nccl: a GPU per worker
    if not depths or min(depths) < 1:
        raise ValueError(f"--depths: {depths}; give pipeline depths >= 1, e.g. 1,2,3")
    if repeats < 1 or warmup < 1:
        raise ValueError(f"--repeats, --warmup: {repeats}, {warmup}; both must be >= 1")
    microbatches = [microbatches] if isinstance(microbatches, int) else list(microbatches)
    if baselines and (not microbatches or any(m < 1 or batch % m for m in microbatches)):
        raise ValueError(f"--microbatches: {microbatches}; each must be >= 1 and divide --batch {batch}")
    if baselines and any(batch % n for n in stages):
        raise ValueError(f"--batch: {batch} must divide evenly among the ddp workers ({stages})")
    keep_freed_memory()  # as every stage does, so the anchors run under the same allocator
    started = not ray.is_initialized()
    if started:
        cluster.start_local(max(stages))
    if device == "cuda" and baselines and ray.cluster_resources().get("GPU", 0) < max(stages):
        print("gpipe, 1f1b and ddp skipped: they need a GPU per worker", flush=True)
        baselines = False
    records, metas, profiles = [], {}, {}
    try:
        if not wait_quiet():
            print("bench: the cores stayed busy for 30 s before the first measure; other work on this machine "
                  "slows every mode", flush=True)
        wires = {w: link.measure(w) for w in ("shm", "gloo") if w == "gloo" or shm.available()} \
            if device == "cpu" else {}
        calib = tiny_runs(batch, threads, stages, depths, transport, microbatches, baselines, warmup, steps) \
            if tiny and device == "cpu" and max(stages) > 1 else None
        for n in stages:
            recs, meta, prof = measure(width, batch, threads, n, depths, warmup, steps, transport, repeats, calls,
                                       baselines, microbatches, fixed_blocks, device, gpus_per_stage)
            records += recs
            metas[n], profiles[n] = meta, prof
            # Written after every N, so a sweep cut short (a job's time limit, a lent machine's end) keeps
            # every N it measured; each file replaced whole, so a kill mid-write leaves the previous one.
            done = [m for m in stages if m in metas]
            meta = {**metas[stages[0]], "stages": done, "stages_planned": stages, "fixed_blocks": fixed_blocks,
                    "per_workers": metas, "torch": torch.__version__, "ray": ray.__version__,
                    "machine": platform.platform(), "cpu": cpu_model(), "cpus": os.cpu_count()}
            table = markdown(records, meta)
            if out:
                save(Path(out), records, meta, table, profiles if device == "cpu" else None, wires, batch,
                     threads, fixed_blocks, calib)
    finally:
        if started:
            cluster.shutdown()
    print(table)
    if out and len(stages) > 1:
        plot(records, meta, Path(out) / "scaling.png")
    return records


def save(out: Path, records: list[dict], meta: dict, table: str, profiles: dict | None, wires: dict,
         batch: int, threads: int, fixed_blocks: int | None, tiny: dict | None = None) -> None:
    """bench.json, bench.md and (CPU workers) the simulator's profile.json, each replaced atomically."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"bench.json": json.dumps({"meta": meta, "records": records}, indent=2), "bench.md": table + "\n"}
    if profiles is not None:
        files["profile.json"] = json.dumps({
            "batch": batch, "classes": 10, "threads": threads, "cpus": os.cpu_count(), "cpu": meta["cpu"],
            "fixed_blocks": fixed_blocks, "links": wires, "per_workers": profiles,
            **({"tiny": tiny} if tiny else {})}, indent=1)
    for name, text in files.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def plot(records: list[dict], meta: dict, path: Path) -> None:
    """Samples/s against N, one line per mode (modes measured at more than one N)."""
    try:
        import matplotlib
    except ImportError:  # e.g. a bare GPU image running examples/device_check.sh: the JSON has it all
        print(f"{path.name} not drawn: matplotlib is not installed", flush=True)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by: dict[str, list] = {}
    for r in records:
        key = r["mode"] if not r["mode"].startswith(("backprop-threads", "reference-dfa-threads")) \
            else r["mode"].rstrip("0123456789") + "N"
        by.setdefault(key, []).append((r["workers"], r["samples_per_s"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # more modes than the default cycle's 10 colours
    for mode, pts in sorted(by.items()):
        if len(pts) > 1 or mode in ("reference-dfa", "backprop-fused-opt"):
            xs, ys = zip(*sorted(pts))
            ax.plot(xs, ys, marker="o", label=mode)
    ax.set_xlabel("workers N")
    ax.set_ylabel("samples/s")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    model = f"{meta['fixed_blocks']} blocks" if meta.get("fixed_blocks") else "N blocks"
    ax.set_title(f"{model} x {meta['width']} wide, batch {meta['batch']}; {meta['cpus']} CPUs")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def markdown(records: list[dict], meta: dict) -> str:
    model = f"{meta['fixed_blocks']} blocks split into N stages" if meta.get("fixed_blocks") else "N blocks on N stages"
    lines = [f"{model}, {meta['width']}-wide tanh blocks, batch {meta['batch']}, {meta['threads']} thread(s) per "
             f"worker, {meta['steps']} timed steps, best of {meta['repeats']} rounds; {meta['cpu']} ({meta['cpus']} CPUs)",
             "", "| N | mode | steps/s | samples/s | ms/step | speedup | efficiency | vs reference DFA | vs ceiling | busy |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in records:
        busy = ", ".join(f"{b:.2f}" for b in r["busy_fraction"]) if r.get("busy_fraction") else ""
        lines.append(f"| {r['workers']} | {r['mode']} | {r['steps_per_s']:.1f} | {r['samples_per_s']:.0f} | "
                     f"{r['ms_per_step']:.3f} | {r['speedup']:.2f}x | {r['efficiency']:.2f} | "
                     f"{r['vs_reference_dfa']:.2f}x | {r['vs_ceiling']:.2f}x | {busy} |")
    lines.append("")
    for n, m in meta["per_workers"].items():
        lines.append(f"N = {n}: single-process DFA step time / backprop step time, timed in alternating chunks: "
                     f"{m['dfa_step_over_backprop_step']:.3f} (same optimizer call), "
                     f"{m['dfa_step_over_plain_backprop_step']:.3f} (plain PyTorch backprop)")
        if "dataplane_over_reference_paired" in m:
            p = m["dataplane_over_reference_paired"]
            lines.append(f"N = {n}: data plane at D = {p['depth']} over single-process DFA, timed in alternating "
                         f"chunks: {p['speedup']:.3f}x (chunks {min(p['chunks']):.2f}-{max(p['chunks']):.2f}; "
                         f"{p['dataplane_steps_per_s']:.1f} against {p['reference_steps_per_s']:.1f} steps/s)")
    return "\n".join(lines)
