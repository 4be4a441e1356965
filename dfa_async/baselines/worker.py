"""One worker of a backprop baseline, on the same model, minibatches and optimizer kernels as the DFA
stages: `gpipe` and `1f1b` (pipeline-parallel backprop with torch.distributed.pipelining; worker r holds
stage r's blocks) and `ddp` (data-parallel backprop; every worker holds the whole model and takes its
equal share of each minibatch). Workers meet in a torch default process group (gloo on CPUs, nccl on
GPUs). Nothing here knows about Ray."""
from __future__ import annotations

import copy
import os
import time
from collections import OrderedDict
from datetime import timedelta

import torch
import torch.distributed as dist

from .. import data, optim
from ..runtime.plane import Rendezvous
from .. import process
from ..stage import Plan
from .local import step, token_loss

KINDS = ("gpipe", "1f1b", "ddp")


class BackpropWorker:
    def __init__(self, kind: str, plan: Plan, rank: int, world: int, microbatches: int = 4, threads: int = 1,
                 device: str = "cpu", x_train=None, y_train=None):
        if kind not in KINDS:
            raise ValueError(f"baseline: {kind!r} is not one of {', '.join(KINDS)}")
        process.setup(threads)
        self.kind, self.plan, self.rank, self.world = kind, plan, rank, world
        self.microbatches = microbatches
        self.device = torch.device(device)
        self.batch = plan.cfg.train.batch_size
        self.x_train = data.as_tensor(x_train) if x_train is not None else None
        self.y_train = data.as_tensor(y_train) if y_train is not None else None
        held = self.x_train if self.x_train is not None else self.y_train
        self.batches = data.batches(len(held), plan.cfg, plan.window) if held is not None else None
        self.x_train, self.y_train = (data.resident(a, self.device, plan.cfg.data.on_device)
                                      for a in (self.x_train, self.y_train))
        net = plan.build()
        ids = list(range(len(net))) if kind == "ddp" else plan.partition()[rank]
        # Named by block index, as in the whole model, so parameters compare by name.
        self.blocks = torch.nn.Sequential(OrderedDict((str(k), net[k]) for k in ids)).to(self.device)
        self.rendezvous: Rendezvous | None = None
        self.net = self.schedule = None

    def pid(self) -> int:
        return os.getpid()

    def open_rendezvous(self, host: str) -> int:
        self.rendezvous = Rendezvous(host, self.world, self.plan.cfg.runtime.peer_timeout_s)
        return self.rendezvous.port

    def connect(self, host: str, port: int) -> None:
        """Join the default process group (every worker at once) and build the schedule or DDP."""
        timeout = timedelta(seconds=self.plan.cfg.runtime.peer_timeout_s)
        store = self.rendezvous.store if self.rendezvous else dist.TCPStore(
            host, port, self.world, is_master=False, timeout=timeout)
        if host == "127.0.0.1":
            os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # gloo would listen on the host's public address
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=store, rank=self.rank, world_size=self.world, timeout=timeout)
        if self.kind == "ddp":
            self.net = torch.nn.parallel.DistributedDataParallel(self.blocks)
        else:
            from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

            stage = PipelineStage(self.blocks, self.rank, self.world, self.device)
            cls = ScheduleGPipe if self.kind == "gpipe" else Schedule1F1B
            # Per-microbatch mean losses, scaled by 1/microbatches: the gradient of the minibatch mean.
            self.schedule = cls(stage, self.microbatches, loss_fn=token_loss)
            self.net = self.blocks
        self.opt = optim.make(list(self.net.parameters()), self.plan.cfg.optim)
        self.decay = optim.decayed(self.net.parameters(), self.plan.cfg.optim)

    def _backward(self, step: int) -> float | None:
        """Forward and backward of `step`'s minibatch; the loss where this worker knows it."""
        if self.kind == "ddp":
            x = self.batches.inputs(self.x_train, step, self.rank, self.world)
            y = self.batches.labels(self.y_train, step, self.rank, self.world)
            loss = token_loss(self.net(x.to(self.device)), y.to(self.device))
            loss.backward()  # DDP averages the workers' gradients: the gradient of the minibatch mean
            return loss.item()
        first, last = self.rank == 0, self.rank == self.world - 1
        args = (self.batches.inputs(self.x_train, step).to(self.device),) if first else ()
        kwargs, losses = {}, []
        if last:
            kwargs = {"target": self.batches.labels(self.y_train, step).to(self.device), "losses": losses}
        self.schedule.step(*args, **kwargs)
        return torch.stack(losses).mean().item() if last else None

    def run(self, start: int, stop: int) -> dict:
        """Train steps start..stop-1; seconds taken and the losses this worker saw."""
        t0 = time.perf_counter()
        losses = []
        for t in range(start, stop):
            lr = optim.lr_at(self.plan.cfg.optim, t, self.plan.total_steps, self.plan.steps_per_epoch)
            loss = step(self.opt, lr, lambda: self._backward(t),
                        lambda: optim.before_step(list(self.blocks), self.plan.cfg.optim, lr, self.decay))
            if loss is not None:
                losses.append(loss)
        return {"seconds": time.perf_counter() - t0, "losses": losses}

    def gradients(self, step: int) -> dict[str, torch.Tensor]:
        """The gradients of `step`'s minibatch, without an update."""
        self.opt.zero_grad(set_to_none=True)
        self._backward(step)
        return {name: p.grad.detach().cpu().clone() for name, p in self.blocks.named_parameters()}

    def modules(self) -> dict[int, torch.nn.Module]:
        return {int(k): copy.deepcopy(block).cpu() for k, block in self.blocks.named_children()}

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
