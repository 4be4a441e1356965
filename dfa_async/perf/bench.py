"""Speed, measured side by side in one run on the same balanced model and the same minibatches:

- `pytorch-backprop`: plain PyTorch backprop in one process, as a user writes it (default optimizer);
- `backprop-fused-opt`: the same with the optimizer kernels the stages use (`optim.fused`), so that its
  ratio to `reference-dfa` compares the learning rules alone;
- `reference-dfa`: the single-process reference (every block in one process);
- `ceiling-independent-stages`: every stage computing at once with no transfers and no waiting;
- `dataplane-D{d}`: the layer-parallel runtime (stages running windows, tensors over the data plane);
- `dataplane-{S}x{R}-D{d}`: the same N workers as a grid, S stages x R replicas (runtime.replicas; N = S x R),
  each replica on batch/R rows, the replicas' gradients summed per stage before every step;
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

import copy
import os
import platform
import re
from pathlib import Path

import torch

from ..runtime import shm
from .. import partition, process
from ..config import ConfigError
from . import pingpong
from .machine import cpu_model, wait_quiet
from .modes import (bench_config, measure_backprop, measure_ceiling, measure_group, measure_pipeline,
                    measure_reference, paired_speedup, setup, step_ratios, tiny_runs)
from .profile import block_profile, fastest
from .writing import markdown, plot, save

MODES_FIXED = ("pytorch-backprop", "backprop-fused-opt", "reference-dfa", "ceiling-independent-stages")
# Below this a stage's step is the same order as the fixed costs a runtime adds to every step (here a
# message costs 5 us on shm, 19 us on gloo, and a stage sends, receives and wakes several times per step):
# the ratios then measure those costs, not the rules or the pipelines.
MEANINGFUL_STEP_S = 1e-3


def too_small(records: list[dict], workers: int) -> str | None:
    """Why the bench of N = `workers` cannot be read as a measure of its modes, or None."""
    sps = {r["mode"]: r["steps_per_s"] for r in records if r["workers"] == workers}
    ceiling = sps["ceiling-independent-stages"]
    why = []
    if 1 / ceiling < MEANINGFUL_STEP_S:
        why.append(f"a stage computes a step in {1e3 / ceiling:.2f} ms (under {MEANINGFUL_STEP_S * 1e3:g} ms)")
    if ceiling < sps["reference-dfa"]:
        why.append("the ceiling is below single-process DFA")
    if not why:
        return None
    return (f"N={workers}: the model is too small for these numbers to mean anything: {' and '.join(why)}; "
            "per-step overheads dominate every mode. Use a wider model (e.g. --width 1024 or more on CPUs)")


def measure(width: int, batch: int, threads: int, stages: int, depths, warmup: int, steps: int,
            transport: str, repeats: int, calls: bool, baselines: bool, microbatches: list[int],
            blocks: int | None = None, device: str = "cpu", gpus_per_stage: float = 1.0, gpt: dict | None = None,
            replicas=(1,)):
    """Every mode on N = `stages` workers, side by side in rounds; records and meta for this N."""

    from ..runtime import RayPipeline
    from .calls import CallsPipeline

    cfg, plan, ds = setup(width, batch, threads, stages, warmup, steps, blocks, device, gpus_per_stage, gpt)
    profiled = device == "cpu" and gpt is None  # the simulator's block profile is of tanh blocks
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

    def grid(s, r, d):
        def go():
            p = copy.deepcopy(plan)
            p.stage_sizes = partition.even(p.num_blocks - 1, s)
            p.cfg.runtime.replicas, p.cfg.runtime.depth = r, d
            return measure_pipeline(lambda: RayPipeline(p, ds), warmup, steps, window)
        return go

    for r in replicas:  # the same N workers as S stages x R replicas
        s = stages // r
        if r > 1 and stages % r == 0 and s <= plan.num_blocks - 1:
            for d in depths if s > 1 else [1]:  # one stage: depth only delays its own updates
                modes[f"dataplane-{s}x{r}-D{d}"] = grid(s, r, d)
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
        if profiled:
            rounds_profiled.append(block_profile(plan, microbatches, stages))
    records = summarize(runs, stages, batch, threads)
    # The best depth against the reference, paired in time (see paired_speedup). Not on a GPU: a lent
    # machine's minutes are few, and a new pipeline there costs every stage a CUDA start.
    paired = None
    if stages > 1 and device == "cpu":
        best = max((r for r in records if r["mode"].startswith("dataplane-D")), key=lambda r: r["steps_per_s"])
        paired = paired_speedup(plan, ds, best["depth"], warmup, steps, threads, window)
    small = too_small(records, stages)
    meta = {"width": width, "batch": batch, "threads": threads, "stages": stages, "blocks": plan.num_blocks,
            **({"gpt": gpt} if gpt else {}),
            "device": device, "gpus_per_stage": gpus_per_stage,
            "partition": cfg.runtime.blocks_per_stage, "steps": steps, "warmup": warmup, "repeats": repeats,
            "window": window, "transport": transport, "microbatches": microbatches,
            # Time of a single-process DFA step over a backprop step of the same model and batch.
            **step_ratios(plan, ds, warmup, steps, threads)}
    if paired:
        meta["dataplane_over_reference_paired"] = paired
    if small:
        meta["too_small"] = small
    if not profiled:  # the simulator's profile is of CPU workers and tanh blocks
        return records, meta, None
    # For the simulator: per-block costs, measured alone (each its best round, as for the modes), and how
    # much slower N stages compute at once.
    blocks = fastest(rounds_profiled)
    ceiling = next(r["steps_per_s"] for r in records if r["mode"] == "ceiling-independent-stages")
    alone = max(sum(blocks[k]["dfa_forward_s"] + blocks[k]["dfa_update_s"] for k in ids) for ids in plan.partition())
    profile = {"blocks": blocks, "partition": plan.stage_sizes, "slowdown": (1 / ceiling) / alone,
               "transport": "shm" if transport in ("auto", "shm") and shm.available() and stages > 1 else "gloo",
               **({"too_small": small} if small else {})}
    return records, meta, profile


def summarize(runs: dict[str, list[tuple[float, list | None]]], workers: int, batch: int, threads: int) -> list[dict]:
    """One record per mode from its rounds (steps/s, busy fractions): its best round, and its ratios to the
    reference (`vs_reference_dfa`), to the ceiling (`vs_ceiling`) and to the single process of its own rule
    (`speedup`: reference-dfa for DFA modes, backprop-fused-opt for backprop), `efficiency` = speedup / N;
    for the pipelines also the depth, the busy fractions and the time per step beyond the ceiling's."""
    records = []
    for mode, results in runs.items():
        sps, busy = max(results, key=lambda t: t[0])
        rec = {"mode": mode, "workers": workers, "steps_per_s": sps, "samples_per_s": sps * batch,
               "ms_per_step": 1e3 / sps, "rounds": [round(s, 2) for s, _ in results], "threads": threads}
        if "-D" in mode:
            rec.update(depth=int(mode.rsplit("D", 1)[1]), stages=workers, busy_fraction=busy)
            if g := re.fullmatch(r"dataplane-(\d+)x(\d+)-D\d+", mode):
                rec.update(stages=int(g[1]), replicas=int(g[2]))
        records.append(rec)
    by = {r["mode"]: r for r in records}
    base, ceiling = by["reference-dfa"]["steps_per_s"], by["ceiling-independent-stages"]["steps_per_s"]
    bp = by["backprop-fused-opt"]["steps_per_s"]
    for r in records:
        r["vs_reference_dfa"] = r["steps_per_s"] / base
        r["vs_ceiling"] = r["steps_per_s"] / ceiling
        dfa = r["mode"].startswith(("reference-dfa", "ceiling", "dataplane", "raycalls"))
        r["speedup"] = r["steps_per_s"] / (base if dfa else bp)
        r["efficiency"] = r["speedup"] / workers
        if "-D" in r["mode"]:  # what the transfers and the waiting add to a step, beyond the stages' compute
            r["overhead_ms_per_step"] = r["ms_per_step"] - 1e3 / ceiling
    return records


def check(width: int, batch: int, threads: int, stages: list[int], depths: list[int], warmup: int, steps: int,
          repeats: int, microbatches: list[int], fixed_blocks: int | None, device: str, gpus_per_stage: float,
          baselines: bool, gpt: dict | None = None, replicas=(1,)) -> None:
    """Every setting of a bench, checked before any work (a bad one used to surface after minutes): a
    ValueError whose one line names the flag and what is allowed."""
    for flag, value, lo in (("--width", width, 1), ("--batch", batch, 2), ("--threads", threads, 1),
                            ("--warmup", warmup, 1), ("--steps", steps, 1), ("--repeats", repeats, 1)):
        if value < lo:
            raise ValueError(f"{flag}: {value}; it must be >= {lo}")
    for flag, values in (("--stages", stages), ("--depths", depths), ("--microbatches", microbatches),
                         ("--replicas", replicas)):
        if not values or min(values) < 1:
            raise ValueError(f"{flag}: {','.join(map(str, values))}; give integers >= 1, comma-separated, e.g. 1,2")
    if fixed_blocks is not None and fixed_blocks < max(stages):
        raise ValueError(f"--fixed-blocks: {fixed_blocks} blocks cannot fill {max(stages)} stages; give at least "
                         f"{max(stages)}")
    if not 0 < gpus_per_stage <= 1:
        raise ValueError(f"--gpus-per-stage: {gpus_per_stage}; it must be > 0 and <= 1")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device: {device!r}; use cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: cuda, but this process sees no GPU; use cpu")
    if any(batch % r for r in replicas):
        raise ValueError(f"--replicas: {','.join(map(str, replicas))}; each must divide --batch {batch}")
    if not any(n % r == 0 and r > 1 for n in stages for r in replicas) and max(replicas) > 1:
        raise ValueError(f"--replicas: {','.join(map(str, replicas))}; no replica count > 1 divides a worker count "
                         f"of --stages {','.join(map(str, stages))} (a grid is N = stages x replicas workers)")
    if baselines and any(batch % m for m in microbatches):
        raise ValueError(f"--microbatches: {microbatches}; each must divide --batch {batch} (or pass --no-baselines)")
    if baselines and any(batch % n for n in stages):
        raise ValueError(f"--batch: {batch} must divide evenly among the ddp workers ({stages}) (or pass "
                         "--no-baselines)")
    for n in stages:
        try:
            bench_config(width, batch, threads, n, warmup + steps, fixed_blocks, device, gpus_per_stage, gpt)
        except ConfigError as err:  # a gpt's settings (e.g. heads that do not divide the width), as flags
            raise ValueError(str(err).replace("model.n_", "--n-").replace("model.block_size", "--block-size")) from None


def run(width: int = 4096, batch: int = 256, threads: int = 1, stages=(2,), depths=(1, 2, 3),
        warmup: int = 5, steps: int = 30, out: Path | None = None, transport: str = "auto",
        repeats: int = 2, calls: bool = True, baselines: bool = True, microbatches=(2, 4),
        fixed_blocks: int | None = None, device: str = "cpu", gpus_per_stage: float = 1.0,
        tiny: bool = True, gpt: dict | None = None, replicas=(1,)) -> list[dict]:
    """The bench over every N in `stages`; all records (each with its `workers` = N). `tiny`: also the
    tiny-model runs that calibrate the simulator (CPU workers, N > 1). `gpt` (n_layer, n_head, n_embd,
    block_size): that GPT on random tokens, split into N stages, instead of tanh blocks (no simulator
    profile: the simulator models tanh blocks). `replicas`: for each N, also every grid of N workers as N / R
    stages x R replicas, R in `replicas`."""
    import ray

    from ..runtime import cluster

    stages = [stages] if isinstance(stages, int) else list(stages)
    depths = [depths] if isinstance(depths, int) else list(depths)
    microbatches = [microbatches] if isinstance(microbatches, int) else list(microbatches)
    replicas = [replicas] if isinstance(replicas, int) else list(replicas)
    if gpt is not None:
        fixed_blocks, tiny = gpt["n_layer"] + 1, False
    check(width, batch, threads, stages, depths, warmup, steps, repeats, microbatches, fixed_blocks, device,
          gpus_per_stage, baselines, gpt, replicas)
    if device == "cuda":
        calls = False  # the per-op Ray-call baseline runs on CPUs only
        baselines = baselines and gpus_per_stage == 1  # torch's pipelines and DDP use nccl: a GPU per worker
    process.setup(threads)  # as every stage does: the modes and profiles timed here run alike
    started = not ray.is_initialized()
    if started:
        cluster.start_local(max(2, *stages))  # the link measures (pingpong) take two workers even at N = 1
    if device == "cuda" and baselines and ray.cluster_resources().get("GPU", 0) < max(stages):
        print("gpipe, 1f1b and ddp skipped: they need a GPU per worker", flush=True)
        baselines = False
    records, metas, profiles = [], {}, {}
    try:
        if not wait_quiet():
            print("bench: the cores stayed busy for 30 s before the first measure; other work on this machine "
                  "slows every mode", flush=True)
        wires = {w: pingpong.measure(w) for w in ("shm", "gloo") if w == "gloo" or shm.available()} \
            if device == "cpu" else {}
        calib = tiny_runs(batch, threads, stages, depths, transport, microbatches, baselines, warmup, steps) \
            if tiny and device == "cpu" and max(stages) > 1 else None
        for n in stages:
            recs, meta, prof = measure(width, batch, threads, n, depths, warmup, steps, transport, repeats, calls,
                                       baselines, microbatches, fixed_blocks, device, gpus_per_stage, gpt, replicas)
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
                save(Path(out), records, meta, table, profiles if device == "cpu" and gpt is None else None, wires, batch,
                     threads, fixed_blocks, calib)
    finally:
        if started:
            cluster.shutdown()
    print(table)
    if out and len(stages) > 1:
        plot(records, meta, Path(out) / "scaling.png")
    return records
