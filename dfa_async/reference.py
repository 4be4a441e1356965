"""The single-process reference trainer: the baseline and the oracle. It carries out the schedule's ops
on in-process stages (by default a single stage holding every block), in exactly the order the
distributed driver submits them to its actors."""
from __future__ import annotations

import torch
from torch import nn

from .stage import Plan, Stage


class LocalPipeline:
    def __init__(self, plan: Plan, partition: list[list[int]] | None = None):
        torch.set_num_threads(plan.cfg.runtime.threads)
        self.plan = plan
        self.stages = [Stage(plan, ids) for ids in (partition or [list(range(plan.num_blocks))])]
        self.errors: dict[int, torch.Tensor] = {}
        self.staleness: dict[int, int] = {}

    def forward(self, step: int, x: torch.Tensor, y: torch.Tensor) -> float:
        for stage in self.stages[:-1]:
            x = stage.forward(step, x)
        loss, self.errors[step] = self.stages[-1].forward(step, x, y)
        return loss

    def update(self, step: int) -> None:
        e = self.errors.pop(step)
        # Under bp the head's backward must run before the other stages step.
        stages = reversed(self.stages) if self.plan.cfg.feedback.rule == "bp" else self.stages
        self.staleness[step] = max(max(stage.update(step, e)) for stage in stages)

    def evaluate(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        for x in batches:
            for stage in self.stages:
                x = stage.evaluate(x)
            outs.append(x)
        return outs

    def state(self) -> dict:
        out = {}
        for stage in self.stages:
            out.update(stage.state())
        return out

    def load_state(self, state: dict) -> None:
        for stage in self.stages:
            stage.load_state(state)
        self.errors.clear()

    def model(self) -> nn.Sequential:
        blocks = {}
        for stage in self.stages:
            blocks.update(stage.modules())
        return nn.Sequential(*[blocks[k] for k in sorted(blocks)])

    def take_timelines(self) -> list[list]:
        return [stage.take_timeline() for stage in self.stages]

    def close(self) -> None:
        pass

    restarts = 0

    def restart(self) -> None:
        raise RuntimeError("the local backend has no stages to restart")
