"""`runtime.stages = "auto"`: measure each block's forward + update on the stages' device, then split the
blocks into contiguous stages that minimise the slowest stage (the pipeline's step time). The model and
the learning rule do not change; only where the blocks run."""
from __future__ import annotations

import copy
import os
import time

import torch

from . import partition
from .stage import Plan, Stage

SAMPLES = 5  # timed forward + update steps per block (their median is its cost), after one warm-up step


def resolve(plan: Plan) -> Plan:
    """Fill in the blocks per stage of a plan whose runtime.stages is "auto": the split that minimises the
    slowest stage, from each block's cost measured here (on the GPU where runtime.device asks for one and
    this process has it, else on the CPU). Other plans are returned as they are."""
    if plan.stage_sizes is not None:
        return plan
    rt = plan.cfg.runtime
    n = min(rt.num_stages or os.cpu_count() or 1, plan.num_blocks)
    device = "cuda" if rt.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    probe = copy.deepcopy(plan)
    probe.cfg.runtime.stages, probe.cfg.feedback.rule = [], "dfa"  # bp's lone-block update needs its successor
    probe.cfg.runtime.num_stages = 0
    probe.stage_sizes = [1] * plan.num_blocks
    torch.set_num_threads(rt.threads)
    plan.block_costs = block_costs(probe, device)
    plan.stage_sizes = partition.balanced(plan.block_costs, n)
    return plan


def block_costs(plan: Plan, device: torch.device | str = "cpu") -> list[float]:
    """Seconds of one training step (forward + update, head error included) of each block alone, at the
    run's batch size on `device`."""
    batch = plan.cfg.train.batch_size
    g = torch.Generator().manual_seed(0)
    shapes = [plan.in_shape] + plan.out_shapes
    e = (torch.randn(batch, plan.classes, generator=g) / batch).to(device)
    y = torch.randint(0, plan.classes, (batch,), generator=g).to(device)
    costs = []
    for k in range(plan.num_blocks):
        stage = Stage(plan, [k], device=device)
        x = torch.randn(batch, *shapes[k], generator=g).to(device)
        times = []
        for t in range(SAMPLES + 1):
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            stage.forward(t, x, y)
            stage.update(t, e)
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        costs.append(sorted(times[1:])[SAMPLES // 2])
    return costs
