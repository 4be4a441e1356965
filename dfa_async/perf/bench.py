"""Speed, measured side by side in one run on the same balanced model and the same minibatches:

- `pytorch-backprop`: plain PyTorch backprop in one process, as a user writes it (default optimizer);
- `backprop-fused-opt`: the same with the optimizer kernels the stages use (`optim.fused`), so that its
  ratio to `reference-dfa` compares the learning rules alone;
- `reference-dfa`: the single-process reference (every block in one process);
- `ceiling-independent-stages`: every stage computing at once with no transfers and no waiting;
- `dataplane-D{d}`: the layer-parallel runtime (stages running windows, tensors over the data plane);
- `raycalls-D{d}`: the per-op Ray-call pipeline it replaced (the overhead baseline).

A program, not a test: it prints samples/s, steps/s and ratios, and writes JSON and a Markdown table.
Every mode runs `repeats` times in rounds (drift on a shared machine hits all modes alike) and reports
its best round."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import config as config_mod, data, optim
from ..reference import LocalPipeline
from ..run import Windows
from ..stage import Plan, Stage, keep_freed_memory

MODES_FIXED = ("pytorch-backprop", "backprop-fused-opt", "reference-dfa", "ceiling-independent-stages")


def bench_config(width: int, batch: int, threads: int, stages: int, steps: int) -> config_mod.Config:
    """`stages` balanced stages: each holds one width x width tanh block (the last also the head), SGD
    with momentum; one epoch of `steps` minibatches."""
    side = int(round(width ** 0.5))
    if side * side != width:
        raise ValueError(f"--width: {width} must be a square (the input is a 1 x s x s image)")
    return config_mod.from_dict({
        "model": {"widths": [width] * stages},
        "data": {"name": "synthetic", "shape": [1, side, side], "n_train": batch * steps, "n_test": batch},
        "optim": {"name": "sgd", "lr": 1e-3, "momentum": 0.9},
        "train": {"batch_size": batch, "epochs": 1},
        "runtime": {"threads": threads, "stages": [1] * (stages - 1) + [2]},
    })


def setup(width: int, batch: int, threads: int, stages: int, warmup: int, steps: int):
    """Config, plan and dataset: warmup + steps minibatches, a drain after the warm-up and at the end."""
    cfg = bench_config(width, batch, threads, stages, warmup + steps)
    g = torch.Generator().manual_seed(0)
    shape = (1, *cfg.data.shape[1:])
    n = batch * (warmup + steps)
    ds = data.Dataset(torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g),
                      torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g), 10)
    plan = Plan(cfg, shape, 10, total_steps=warmup + steps, steps_per_epoch=warmup + steps)
    plan.marks = sorted({warmup - 1, warmup + steps - 1})
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


def measure_backprop(plan, ds, warmup: int, steps: int, fused: bool) -> float:
    """Steps/s of plain backprop over the same minibatches."""
    cfg = plan.cfg
    torch.set_num_threads(cfg.runtime.threads)
    net = plan.build()
    if fused:
        opt = optim.make(list(net.parameters()), cfg.optim)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum)
    batches = data.Batches(len(ds.x_train), cfg.train.batch_size, cfg.train.seed)

    def step(t):
        idx = batches.indices(t)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(ds.x_train.index_select(0, idx)), ds.y_train.index_select(0, idx)).backward()
        opt.step()

    for t in range(warmup):
        step(t)
    t0 = time.perf_counter()
    for t in range(warmup, warmup + steps):
        step(t)
    return steps / (time.perf_counter() - t0)


def measure_pipeline(make, warmup: int, steps: int, window: int) -> tuple[float, list[float] | None]:
    pipe = make()
    try:
        drive(pipe, 0, warmup, window)
        secs, timelines = drive(pipe, warmup, warmup + steps, window)
    finally:
        pipe.close()
    busy = busy_fractions(timelines) if len(timelines[0]) > 1 else None
    return steps / secs, busy


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


def measure_ceiling(plan, warmup: int, steps: int) -> float:
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
    return steps / max(secs)


def run(width: int = 4096, batch: int = 256, threads: int = 1, stages: int = 2, depths=(1, 2, 3),
        warmup: int = 5, steps: int = 30, out: Path | None = None, transport: str = "auto",
        repeats: int = 2, calls: bool = True) -> list[dict]:
    import ray

    from ..runtime import RayPipeline
    from .calls import CallsPipeline

    keep_freed_memory()  # as every stage does, so the anchors run under the same allocator
    cfg, plan, ds = setup(width, batch, threads, stages, warmup, steps)
    cfg.runtime.transport = transport
    window = cfg.runtime.window
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=stages, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)

    def with_depth(d, make):
        def go():
            plan.cfg.runtime.depth = d
            return measure_pipeline(lambda: make(plan, ds), warmup, steps, window)
        return go

    modes = {
        "pytorch-backprop": lambda: (measure_backprop(plan, ds, warmup, steps, fused=False), None),
        "backprop-fused-opt": lambda: (measure_backprop(plan, ds, warmup, steps, fused=True), None),
        "reference-dfa": with_depth(1, lambda p, d: LocalPipeline(p, None, d)),
        "ceiling-independent-stages": lambda: (measure_ceiling(plan, warmup, steps), None),
    }
    for d in depths:
        modes[f"dataplane-D{d}"] = with_depth(d, RayPipeline)
    if calls:
        for d in depths:
            modes[f"raycalls-D{d}"] = with_depth(d, CallsPipeline)
    runs: dict[str, list] = {m: [] for m in modes}
    try:
        for r in range(repeats):
            for mode, fn in modes.items():
                sps, busy = fn()
                runs[mode].append((sps, busy))
                print(f"round {r + 1}  {mode:<28} {sps:10.1f} steps/s  {sps * batch:10.1f} samples/s"
                      + (f"  busy {busy}" if busy else ""), flush=True)
    finally:
        if started:
            ray.shutdown()
    records = []
    for mode, results in runs.items():
        sps, busy = max(results, key=lambda t: t[0])
        rec = {"mode": mode, "steps_per_s": sps, "samples_per_s": sps * batch, "ms_per_step": 1e3 / sps,
               "rounds": [round(s, 2) for s, _ in results], "threads": threads}
        if "-D" in mode:
            rec.update(depth=int(mode.rsplit("D", 1)[1]), stages=stages, busy_fraction=busy)
        records.append(rec)
    by = {r["mode"]: r for r in records}
    base, ceiling = by["reference-dfa"]["steps_per_s"], by["ceiling-independent-stages"]["steps_per_s"]
    for r in records:
        r["vs_reference_dfa"] = r["steps_per_s"] / base
        r["vs_ceiling"] = r["steps_per_s"] / ceiling
        if "-D" in r["mode"]:  # what the transfers and the waiting add to a step, beyond the stages' compute
            r["overhead_ms_per_step"] = r["ms_per_step"] - 1e3 / ceiling
    meta = {"width": width, "batch": batch, "threads": threads, "stages": stages, "steps": steps,
            "warmup": warmup, "repeats": repeats, "window": window, "transport": transport,
            "torch": torch.__version__, "ray": ray.__version__, "machine": platform.platform(),
            "cpu": cpu_model(), "cpus": os.cpu_count(),
            # Time of a single-process DFA step over a backprop step of the same model and batch.
            "dfa_step_over_backprop_step": by["backprop-fused-opt"]["steps_per_s"] / base,
            "dfa_step_over_plain_backprop_step": by["pytorch-backprop"]["steps_per_s"] / base}
    table = markdown(records, meta)
    print(table)
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps({"meta": meta, "records": records}, indent=2))
        (out / "bench.md").write_text(table + "\n")
    return records


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def markdown(records: list[dict], meta: dict) -> str:
    lines = [f"{meta['stages']} stages x {meta['width']}-wide tanh blocks, batch {meta['batch']}, {meta['threads']} "
             f"thread(s) per worker, {meta['steps']} timed steps, best of {meta['repeats']} rounds; "
             f"{meta['cpu']} ({meta['cpus']} CPUs)", "",
             "| mode | steps/s | samples/s | ms/step | vs reference DFA | vs ceiling | busy |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in records:
        busy = ", ".join(f"{b:.2f}" for b in r["busy_fraction"]) if r.get("busy_fraction") else ""
        lines.append(f"| {r['mode']} | {r['steps_per_s']:.1f} | {r['samples_per_s']:.0f} | {r['ms_per_step']:.3f} | "
                     f"{r['vs_reference_dfa']:.2f}x | {r['vs_ceiling']:.2f}x | {busy} |")
    lines += ["", f"Single-process DFA step time / backprop step time: {meta['dfa_step_over_backprop_step']:.3f} "
              f"(same optimizer kernels), {meta['dfa_step_over_plain_backprop_step']:.3f} (plain PyTorch backprop)"]
    return "\n".join(lines)
