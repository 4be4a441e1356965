"""The per-op Ray-call pipeline: the runtime before the data plane, kept as a baseline of the bench (not a
training path). The driver submits every op of every step as a Ray call; activations and the error travel
through Ray's object store; each actor runs one caller's calls in submission order, which is the
schedule. It shows what the data plane saves when a stage's step is short."""
from __future__ import annotations

from collections import deque

import ray
import torch

from .. import data, process, schedule
from ..stage import Plan, Stage, Window, assemble


class CallsStage:
    def __init__(self, plan: Plan, ids: list[int], threads: int):
        process.setup(threads)
        self.stage = Stage(plan, ids)

    def forward(self, step: int, x, y=None):
        out = self.stage.forward(step, data.as_tensor(x), None if y is None else data.as_tensor(y))
        if self.stage.is_head:
            loss, e = out
            return loss.item(), e.numpy()
        return out.numpy()

    def update(self, step: int, e) -> None:
        self.stage.update(step, data.as_tensor(e))

    def take_timeline(self) -> list:
        return self.stage.take_timeline()

    def modules(self) -> dict:
        return self.stage.modules()


class CallsPipeline:
    """Same window interface as the data plane's RayPipeline; the driver feeds every minibatch."""

    def __init__(self, plan: Plan, ds: data.Dataset):
        self.plan, self.ds = plan, ds
        self.batches = data.Batches(len(ds.x_train), plan.cfg.train.batch_size, plan.cfg.train.seed,
                                    plan.cfg.data.augment)
        cls = ray.remote(num_cpus=1)(CallsStage)
        self.actors = [cls.remote(plan, ids, plan.cfg.runtime.threads) for ids in plan.partition()]
        self.errors: dict[int, ray.ObjectRef] = {}

    def submit(self, start: int, stop: int):
        losses, in_flight = [], deque()
        depth = self.plan.cfg.runtime.depth
        for kind, t in schedule.ops(start, stop, depth, self.plan.boundaries):
            if kind == "forward":
                h = self.batches.inputs(self.ds.x_train, t).numpy()
                for actor in self.actors[:-1]:
                    h = actor.forward.remote(t, h)
                loss, self.errors[t] = self.actors[-1].forward.options(num_returns=2).remote(
                    t, h, self.batches.labels(self.ds.y_train, t).numpy())
                losses.append(loss)
                in_flight.append(loss)
                while len(in_flight) > depth + 1:  # throttle: bounded queues and stashes
                    ray.get(in_flight.popleft())
            elif kind == "update":
                e = self.errors.pop(t)  # one object, produced by the head; every stage reads it
                for actor in self.actors:
                    actor.update.remote(t, e)
        return start, stop, losses

    def collect(self, handle) -> Window:
        start, stop, losses = handle
        timelines = ray.get([a.take_timeline.remote() for a in self.actors])  # queued behind every op
        return Window(start, stop, ray.get(losses), timelines)

    def model(self) -> torch.nn.Sequential:
        return assemble(ray.get([a.modules.remote() for a in self.actors]))

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a)
