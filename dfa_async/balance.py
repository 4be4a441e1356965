"""`runtime.blocks_per_stage = "auto"`: measure each block's forward + update on the stages' device, then
split the blocks into contiguous stages that minimise the slowest stage (the pipeline's step time). The
model and the learning rule do not change; only where the blocks run."""
from __future__ import annotations

import copy
import os
import time

import torch

from . import partition, process
from .stage import Plan, Stage

SAMPLES = 5  # timed forward + update steps per block (their median is its cost), after one warm-up step


def resolve(plan: Plan) -> Plan:
    """Fill in the blocks per stage of a plan whose runtime.blocks_per_stage is "auto": the split that minimises the
    slowest stage, from each block's cost measured here (on the GPU where runtime.device asks for one and
    this process has it, else on the CPU). Other plans are returned as they are."""
    if plan.stage_sizes is not None:
        return plan
    rt = plan.cfg.runtime
    n = min(rt.num_stages or os.cpu_count() or 1, plan.num_blocks)
    device = "cuda" if rt.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    probe = copy.deepcopy(plan)
    probe.cfg.runtime.blocks_per_stage, probe.cfg.feedback.rule = [], "dfa"  # bp's lone-block update needs its successor
    probe.cfg.runtime.num_stages = 0
    probe.stage_sizes = [1] * plan.num_blocks
    with process.threads(rt.threads):  # as a stage will run them
        plan.block_costs = block_costs(probe, device)
    plan.stage_sizes = partition.balanced(plan.block_costs, n)
    return plan


class Solo:
    """Blocks `ids` of `plan` as one stage stepping alone on its own random data (no peers, no waiting):
    what block timing measures, one op at a time or whole steps."""

    def __init__(self, plan: Plan, ids: list[int], device: torch.device | str = "cpu", seed: int = 0):
        self.stage = Stage(plan, ids, device=device)
        batch = plan.cfg.train.batch_size
        g = torch.Generator().manual_seed(seed)
        if ids[0] == 0 and plan.window:  # token ids
            self.x = torch.randint(0, plan.classes, (batch, plan.window), generator=g).to(device)
        else:
            self.x = torch.randn(batch, *([plan.in_shape] + plan.out_shapes)[ids[0]], generator=g).to(device)
        self.y = torch.randint(0, plan.classes, (batch, *plan.positions), generator=g).to(device)
        self.e = (torch.randn(batch, *plan.error_shape, generator=g) / batch).to(device)
        self.cuda = torch.device(device).type == "cuda"
        self.t = 0

    def forward(self) -> None:
        self.stage.forward(self.t, self.x, self.y)

    def update(self) -> None:
        self.stage.update(self.t, self.e)
        self.t += 1

    def steps(self, n: int) -> float:
        """Seconds of n whole steps (forward + update), the device synced."""
        return self.timed(lambda: [(self.forward(), self.update()) for _ in range(n)])

    def timed(self, fn) -> float:
        if self.cuda:  # kernels run asynchronously: time them, not their launch
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def op_times(self, samples: int = SAMPLES) -> tuple[float, float]:
        """Median seconds of the forward and of the update, over `samples` steps after one warm-up step."""
        fwd, upd = [], []
        for _ in range(samples + 1):
            fwd.append(self.timed(self.forward))
            upd.append(self.timed(self.update))
        return sorted(fwd[1:])[samples // 2], sorted(upd[1:])[samples // 2]


def block_costs(plan: Plan, device: torch.device | str = "cpu") -> list[float]:
    """Seconds of one training step (forward + update, head error included) of each block alone, at the
    run's batch size on `device`."""
    return [sum(Solo(plan, [k], device, seed=k).op_times()) for k in range(plan.num_blocks)]
