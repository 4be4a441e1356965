"""One stage's side of the pipeline: it carries out its own part of each window of the schedule, reading
its minibatches itself (the first stage its inputs, the head its labels, by the run's seeded order) and
exchanging tensors with its peers over the data plane. The driver only says which window to run.

Every stage computes the same `schedule.ops(a, b, …)`; the pure function is what keeps them in step.
Nothing here knows about Ray (the actor wraps this class) or about a particular model."""
from __future__ import annotations

import copy
import math
import os

import torch

from .. import data, schedule
from ..stage import Plan, Stage
from .plane import Link, Rendezvous


class StageWorker:
    def __init__(self, plan: Plan, ids: list[int], rank: int, world: int, n_test: int, threads: int = 1,
                 device: str = "cpu", x_train=None, y_train=None, x_test=None, y_test=None):
        torch.set_num_threads(threads)
        self.plan, self.rank, self.world = plan, rank, world
        self.device = torch.device(device)
        self.stage = Stage(plan, ids, device=self.device)
        self.first, self.head = rank == 0, rank == world - 1
        cfg = plan.cfg
        self.depth, self.batch = cfg.runtime.depth, cfg.train.batch_size
        # The first stage holds the inputs, the head the labels (a single stage both).
        self.x_train, self.x_test = (data.as_tensor(a) if a is not None else None for a in (x_train, x_test))
        self.y_train, self.y_test = (data.as_tensor(a) if a is not None else None for a in (y_train, y_test))
        held = self.x_train if self.first else self.y_train
        self.x_train, self.y_train = (data.resident(a, self.device, cfg.data.on_device)
                                      for a in (self.x_train, self.y_train))
        self.batches = data.Batches(len(held), self.batch, cfg.train.seed, cfg.data.augment) if held is not None else None
        self.n_test = n_test
        self.in_shape = plan.in_shape if self.first else plan.out_shapes[ids[0] - 1]
        self.rendezvous: Rendezvous | None = None
        self.link: Link | None = None
        if world == 1:
            self.link = Link(0, 1)

    def pid(self) -> int:
        return os.getpid()

    # -- the data plane ---------------------------------------------------------------------------------
    def open_rendezvous(self, host: str) -> int:
        """Rank 0: listen on `host` for the others; returns the port."""
        self.rendezvous = Rendezvous(host, self.world, self.plan.cfg.runtime.peer_timeout_s)
        return self.rendezvous.port

    def connect(self, host: str, port: int, backend: str) -> None:
        """Join the process group (every rank at once: it returns when all have joined)."""
        sends = (self.depth + 2) * (self.world - 1 if self.head else 1)
        self.link = Link(self.rank, self.world, backend=backend, device=self.device, host=host, port=port,
                         rendezvous=self.rendezvous, timeout_s=self.plan.cfg.runtime.peer_timeout_s,
                         error_shape=(self.batch, self.plan.classes), max_sends=sends,
                         ring_bytes=self.ring_bytes())

    def ring_bytes(self) -> int:
        """Room for depth + 2 of the largest message any stage sends (1 to 64 MiB; a larger message
        streams through): a sender never waits on a receiver that is busy computing."""
        rows = max(self.batch, self.plan.cfg.train.eval_batch_size)
        largest = max(math.prod(s) for s in self.plan.out_shapes) * rows * 4
        return min(max((self.depth + 2) * (largest + 64), 1 << 20), 64 << 20)

    # -- the schedule ------------------------------------------------------------------------------------
    def run(self, start: int, stop: int) -> dict:
        """This stage's part of window [start, stop). Returns the head's losses (one per step) and the
        stage's op timestamps."""
        stage, link = self.stage, self.link
        losses = []
        ahead = self.depth + 1  # inputs whose receive is posted before they are needed
        shape = (self.batch, *self.in_shape)
        if not self.first:
            for t in range(start, min(start + ahead, stop)):
                link.post_input(t, shape)
        for kind, t in schedule.ops(start, stop, self.depth, self.plan.marks):
            if kind == "forward":
                if self.first:
                    x = self.batches.inputs(self.x_train, t).to(self.device, non_blocking=True)
                else:
                    x = link.input(t)
                    if t + ahead < stop:
                        link.post_input(t + ahead, shape)
                if self.head:
                    loss, e = stage.forward(t, x, self.batches.labels(self.y_train, t).to(self.device))
                    losses.append(loss)
                    link.share_error(t, e)
                else:
                    link.share_error(t)
                    link.output(t, stage.forward(t, x))
            elif kind == "update":
                stage.update(t, link.error(t))
        if not self.head:
            link.flush()
        out = {"timeline": stage.take_timeline(), "stats": stage.take_stats()}
        if self.head:
            out["losses"] = torch.stack(losses).tolist() if losses else []  # one device sync per window
        return out

    def evaluate(self):
        """The test set through every stage in eval mode; the head returns (correct, summed loss, n)."""
        bs = self.plan.cfg.train.eval_batch_size
        spans = [(i, min(i + bs, self.n_test)) for i in range(0, self.n_test, bs)]
        link, correct, total = self.link, 0, 0.0
        if not self.first:
            for j, (a, b) in enumerate(spans):
                link.post_input(-1 - j, (b - a, *self.in_shape))
        for j, (a, b) in enumerate(spans):
            x = self.x_test[a:b].to(self.device, non_blocking=True) if self.first else link.input(-1 - j)
            if self.head:
                c, s = self.stage.evaluate(x, self.y_test[a:b].to(self.device))
                correct, total = correct + int(c), total + float(s)
            else:
                link.output(-1 - j, self.stage.evaluate(x))
        if not self.head:
            link.flush()
        return (correct, total, self.n_test) if self.head else None

    # -- the alignment probe (at a drained boundary; tensors pass stage to stage as Ray objects) ---------
    def probe_forward(self, n: int, x=None, data: str = "train", mode: str = "train"):
        """Forward of the probe on the first n samples of `data` (train or test); the head returns e."""
        self.probe = self.stage.probe(mode)
        if self.first:
            x = (self.x_train if data == "train" else self.x_test)[:n]
        y = (self.y_train if data == "train" else self.y_test)[:n].to(self.device) if self.head else None
        return self.probe.forward(x.to(self.device), y).cpu()

    def probe_backward(self, g, e):
        """The stage's measures and dL/d(input) for the stage before (see probe.py)."""
        g = g.to(self.device) if g is not None else None
        blocks, g_in = self.probe.backward(g, e.to(self.device))
        self.probe = None
        return blocks, (g_in.cpu() if g_in is not None else None)

    # -- inspection ----------------------------------------------------------------------------------------
    def state(self) -> dict:
        return self.stage.state()

    def load_state(self, state: dict) -> None:
        self.stage.load_state(state)

    def modules(self) -> dict:
        cpu = self.device.type == "cpu"
        return {k: m if cpu else copy.deepcopy(m).cpu() for k, m in self.stage.modules().items()}
