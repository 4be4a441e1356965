"""One stage's side of the pipeline: it carries out its own part of each window of the schedule, reading
its minibatches itself (the first stage its inputs, the head its labels, by the run's seeded order) and
exchanging tensors with its peers over the data plane. The driver only says which window to run.

Every stage computes the same `schedule.ops(a, b, …)`; the pure function is what keeps them in step.
With runtime.replicas = R, R such pipelines run side by side, each on its share of every minibatch's rows;
replica r of a stage talks only to replica r of the others, and sums its gradients with the other
replicas of its own stage (reduce.py).
Nothing here knows about Ray (the actor wraps this class) or about a particular model."""
from __future__ import annotations

import copy
import math
import os
import time

import torch

from .. import data, data as data_mod, process, wire
from ..stage import Plan, Stage
from .plane import Link, Rendezvous
from .reduce import Replicas


class StageWorker:
    def __init__(self, plan: Plan, ids: list[int], rank: int, world: int, n_test: int, threads: int = 1,
                 device: str = "cpu", x_train=None, y_train=None, x_test=None, y_test=None, replica: int = 0,
                 replicas: int = 1):
        process.setup(threads)
        self.plan, self.rank, self.world = plan, rank, world
        self.replica, self.replicas, self.group = replica, replicas, None
        self.partition = plan.partition()
        self.device = torch.device(device)
        self.stage = Stage(plan, ids, device=self.device, part=replica, parts=replicas,
                           reduce=lambda t: self.group.sum(t))
        self.first, self.head = rank == 0, rank == world - 1
        cfg = plan.cfg
        self.depth, self.batch = cfg.runtime.depth, cfg.train.batch_size // replicas  # this replica's rows
        # The first stage holds the inputs, the head the labels (a single stage both).
        self.x_train, self.x_test = (data.as_tensor(a) if a is not None else None for a in (x_train, x_test))
        self.y_train, self.y_test = (data.as_tensor(a) if a is not None else None for a in (y_train, y_test))
        held = self.x_train if self.first else self.y_train
        self.x_train, self.y_train = (data.resident(a, self.device, cfg.data.on_device)
                                      for a in (self.x_train, self.y_train))
        self.batches = data.batches(len(held), cfg, plan.window) if held is not None else None
        self.n_test = n_test
        self.errors: dict[int, torch.Tensor] = {}
        self.rendezvous: dict[str, Rendezvous] = {}
        self.link: Link | None = None
        if world == 1:
            self.link = Link(0, 1)

    def pid(self) -> int:
        return os.getpid()

    # -- the data plane ---------------------------------------------------------------------------------
    def open_rendezvous(self, host: str, name: str = "pipeline") -> int:
        """Listen on `host` for the others (`pipeline`: this stage is its pipeline's rank 0; `replicas`: its
        stage's replica 0); returns the port."""
        world = self.world if name == "pipeline" else self.replicas
        self.rendezvous[name] = Rendezvous(host, world, self.plan.cfg.runtime.peer_timeout_s)
        return self.rendezvous[name].port

    def connect(self, store_host: str, port: int, transport: str, host: str = "127.0.0.1") -> dict:
        """Join the data plane (every rank at once: it returns when every channel said hello). `host`: the
        address this stage listens on, its own node's. Returns what it bound, for the event log."""
        self.link = Link(self.rank, self.world, transport=transport, device=self.device, host=host,
                         store_host=store_host, port=port, rendezvous=self.rendezvous.get("pipeline"),
                         timeout_s=self.plan.cfg.runtime.peer_timeout_s,
                         max_sends=wire.max_sends(self.rank, self.world, self.depth), ring_bytes=self.ring_bytes())
        return {"host": host, "buffers": self.link.buffers, "device": str(self.link.device)}

    def join_replicas(self, store_host: str, port: int, backend: str, host: str = "127.0.0.1") -> None:
        """Join the group of this stage's replicas (every replica of the stage at once)."""
        params = sum(p.numel() * p.element_size() for m in self.stage.modules().values() for p in m.parameters())
        self.group = Replicas(self.rank, self.replica, self.replicas, store_host, port, backend, host, self.device,
                              self.plan.cfg.runtime.peer_timeout_s, ring_bytes=min(max(2 * params + 256, 1 << 20),
                                                                                   64 << 20))

    def ping(self) -> float | None:
        """The doctor's ping (wire.ping): the seconds of this stage's own cycle, from its send to the
        message's return (None for the head, which only relays)."""
        sent = took = None
        for item in wire.ping(self.rank, self.world):
            if item.op == "send" and item.key == self.rank:
                sent = time.perf_counter()
            self.link.run([item])
            if item.op == "wait" and item.key == self.rank:
                took = time.perf_counter() - sent
        return took

    def ring_bytes(self) -> int:
        """Room for depth + 2 of the largest message any stage sends (1 to 64 MiB; a larger message
        streams through): a sender never waits on a receiver that is busy computing."""
        rows = max(self.batch, self.plan.cfg.train.eval_batch_size)
        largest = max(math.prod(s) for s in self.plan.out_shapes) * rows * 4
        return min(max((self.depth + 2) * (largest + 64), 1 << 20), 64 << 20)

    # -- the schedule ------------------------------------------------------------------------------------
    def shapes(self) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
        """What each stage sends on (batch first), and the error's shape."""
        ends = [ids[-1] for ids in self.partition]
        return [(self.batch, *self.plan.out_shapes[k]) for k in ends], (self.batch, *self.plan.error_shape)

    def run(self, start: int, stop: int) -> dict:
        """This stage's part of window [start, stop): its items of the wire schedule, in order. Returns the
        head's losses (one per step) and the stage's op timestamps."""
        stage, link, head = self.stage, self.link, self.world - 1
        acts, error_shape = self.shapes()
        act = str(self.plan.act_dtype).removeprefix("torch.")
        items = wire.window(self.rank, self.world, start, stop, self.depth, self.plan.boundaries, acts, error_shape,
                            act)
        got, errors, losses = {}, self.errors, []  # the head's errors outlive a window: D - 1 await update
        for op, t, ch, msg in items:
            if op == "recv":
                link.post(ch, msg)
            elif op == "wait":
                got[msg.kind, t] = link.wait(ch, msg)
            elif op == "forward":
                if self.first:
                    x = self.batches.inputs(self.x_train, t, self.replica, self.replicas).to(self.device,
                                                                                             non_blocking=True)
                else:
                    x = got.pop((wire.ACT, t))
                if self.rank == head:
                    y = self.batches.labels(self.y_train, t, self.replica, self.replicas)
                    loss, errors[t] = stage.forward(t, x, y.to(self.device))
                    losses.append(loss)
                else:
                    got["out", t] = stage.forward(t, x)
            elif op == "send":
                link.send(ch, msg, errors[t] if msg.kind == wire.ERR else got.pop(("out", t)))
            elif op == "update":
                stage.update(t, errors.pop(t) if self.rank == head else got.pop((wire.ERR, t)))
            elif op == "flush":
                link.flush()
        out = {"timeline": stage.take_timeline(), "stats": stage.take_stats()}
        if self.rank == head:
            out["losses"] = torch.stack(losses).tolist() if losses else []  # one device sync per window
        return out

    def evaluate(self):
        """The test set through every stage in eval mode; the head returns (correct, summed loss, n)."""
        bs = self.plan.cfg.train.eval_batch_size
        spans = [(i, min(i + bs, self.n_test)) for i in range(0, self.n_test, bs)]
        ends = [ids[-1] for ids in self.partition]
        items = wire.evaluation(self.rank, self.world, [b - a for a, b in spans],
                                [self.plan.out_shapes[k] for k in ends], str(self.plan.act_dtype).removeprefix("torch."))
        link, head, got, correct, total = self.link, self.rank == self.world - 1, {}, 0, 0.0
        for op, j, ch, msg in items:
            if op == "recv":
                link.post(ch, msg)
            elif op == "wait":
                got[j] = link.wait(ch, msg)
            elif op == "evaluate":
                a, b = spans[j]
                x = self.x_test[a:b].to(self.device, non_blocking=True) if self.first else got.pop(j)
                if head:
                    c, s = self.stage.evaluate(x, self.y_test[a:b].to(self.device))
                    correct, total = correct + int(c), total + float(s)
                else:
                    got["out", j] = self.stage.evaluate(x)
            elif op == "send":
                link.send(ch, msg, got.pop(("out", j)))
            elif op == "flush":
                link.flush()
        return (correct, total, self.y_test.numel()) if head else None  # per sample, or per position

    # -- the alignment probe (at a drained boundary; tensors pass stage to stage as Ray objects) ---------
    def probe_forward(self, n: int, x=None, data: str = "train", mode: str = "train"):
        """Forward of the probe on the first n samples of `data` (train or test); the head returns e."""
        self.probe = self.stage.probe(mode)
        window = self.plan.window if data == "train" else 0  # a stream's validation set is windows already
        if self.first:
            x = data_mod.first(self.x_train if data == "train" else self.x_test, n, window)
        y = data_mod.first(self.y_train if data == "train" else self.y_test, n, window, shift=1).to(self.device) \
            if self.head else None
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
