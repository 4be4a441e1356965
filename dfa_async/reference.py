"""The single-process reference trainer: the baseline and the oracle. It carries out the schedule's ops on
in-process stages (by default a single stage holding every block), each op on every stage before the
next op, with the minibatches the distributed stages read for themselves. The Ray runtime must end
with its weights."""
from __future__ import annotations

import copy

import torch
from torch import nn

from . import data, data as data_mod, probe, schedule
from .stage import Plan, Stage, Window, assemble


class LocalPipeline:
    """The reference as a `executor.Pipeline`: windows run at once, in this process."""

    def __init__(self, plan: Plan, partition: list[list[int]] | None = None, ds: data.Dataset | None = None,
                 device: str = "cpu"):
        self.plan, self.ds, self.device = plan, ds, torch.device(device)
        self.stages = [Stage(plan, ids, device=self.device) for ids in (partition or [list(range(plan.num_blocks))])]
        self.errors: dict[int, torch.Tensor] = {}
        self.staleness: dict[int, int] = {}
        if ds is not None:
            self.batches = data.batches(len(ds.x_train), plan.cfg, plan.window)
            self.x_train, self.y_train = (data.resident(a, self.device, plan.cfg.data.on_device)
                                          for a in (ds.x_train, ds.y_train))

    # -- the schedule's ops --------------------------------------------------------------------------
    def forward(self, step: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for stage in self.stages[:-1]:
            x = stage.forward(step, x)
        loss, self.errors[step] = self.stages[-1].forward(step, x, y)
        return loss

    def update(self, step: int) -> None:
        e = self.errors.pop(step)
        # Under bp the head's backward must run before the other stages step.
        stages = reversed(self.stages) if self.plan.cfg.feedback.rule == "bp" else self.stages
        self.staleness[step] = max(max(stage.update(step, e), default=0) for stage in stages)

    # -- windows (the driver's interface, shared with the Ray runtime) --------------------------------
    def submit(self, start: int, stop: int) -> Window:
        losses = []
        for kind, t in schedule.ops(start, stop, self.plan.cfg.runtime.depth, self.plan.boundaries):
            if kind == "forward":
                losses.append(self.forward(t, self.batches.inputs(self.x_train, t).to(self.device),
                                           self.batches.labels(self.y_train, t).to(self.device)))
            elif kind == "update":
                self.update(t)
        return Window(start, stop, torch.stack(losses).tolist(), [s.take_timeline() for s in self.stages],
                      [s.take_stats() for s in self.stages])

    def collect(self, window: Window) -> Window:
        return window

    def evaluate(self) -> tuple[float, float]:
        """Test accuracy and mean loss, batch by batch as the distributed stages compute them."""
        x, y, bs = self.ds.x_test, self.ds.y_test, self.plan.cfg.train.eval_batch_size
        correct, total = 0, 0.0
        for a in range(0, len(x), bs):
            h = x[a:a + bs].to(self.device)
            for stage in self.stages[:-1]:
                h = stage.evaluate(h)
            c, s = self.stages[-1].evaluate(h, y[a:a + bs].to(self.device))
            correct, total = correct + int(c), total + float(s)
        return correct / y.numel(), total / y.numel()  # per sample, or per position of a sequence

    def align(self, n: int, data: str = "train", mode: str = "train") -> list[dict]:
        """Alignment of every block on the first n samples of `data` (train or test), the blocks in `mode`
        (see probe.py)."""
        x, y = (self.ds.x_train, self.ds.y_train) if data == "train" else (self.ds.x_test, self.ds.y_test)
        window = self.plan.window if data == "train" else 0  # a stream's validation set is windows already
        x, y = data_mod.first(x, n, window), data_mod.first(y, n, window, shift=1)
        return probe.chain([stage.probe(mode) for stage in self.stages], x.to(self.device), y.to(self.device))

    # -- state -------------------------------------------------------------------------------------------
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
        net = assemble([stage.modules() for stage in self.stages])
        return copy.deepcopy(net).cpu() if self.device.type != "cpu" else net

    def close(self) -> None:
        pass

    def describe(self) -> None:
        return None  # one process: no stages of their own to record

    def warnings(self) -> list[str]:
        return []

    restarts = 0

    def restart(self) -> None:
        raise RuntimeError("the local backend has no stages to restart")
