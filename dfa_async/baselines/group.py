"""The driver's side of a backprop baseline: one Ray actor per worker, placed as the DFA stages are (one
bundle each), joined in a process group; the driver asks all of them to train steps a..b and waits."""
from __future__ import annotations

import ray
import torch

from ..runtime.cluster import Placement, release
from ..stage import Plan, assemble
from .worker import KINDS, BackpropWorker

class _Actor(BackpropWorker):
    def node_ip(self) -> str:
        return ray.util.get_node_ip_address()


RemoteWorker = ray.remote(_Actor)


class BackpropGroup:
    """`kind` backprop on `workers` Ray actors (gpipe/1f1b: one per stage of plan.partition())."""

    def __init__(self, kind: str, plan: Plan, ds, microbatches: int = 4, workers: int | None = None):
        if kind not in KINDS:
            raise ValueError(f"baseline: {kind!r} is not one of {', '.join(KINDS)}")
        n = len(plan.partition()) if kind != "ddp" or workers is None else workers
        batch = plan.cfg.train.batch_size
        split = microbatches if kind != "ddp" else n
        if batch % split:
            what = f"microbatches ({microbatches})" if kind != "ddp" else f"ddp workers ({n})"
            raise ValueError(f"train.batch_size: {batch} must divide evenly into {what}")
        if kind == "1f1b" and microbatches < n:
            raise ValueError(f"microbatches: 1f1b needs at least one microbatch per stage; {microbatches} < {n} "
                             "stages")
        self.kind, self.n = kind, n
        cfg = plan.cfg
        self.device = "cuda" if cfg.runtime.device == "cuda" else "cpu"
        if self.device == "cuda" and cfg.runtime.gpus_per_stage < 1:
            raise ValueError("runtime.gpus_per_stage: the backprop baselines use nccl, which needs a GPU per worker; "
                             "set it to 1")
        bundle = {"CPU": 1, "GPU": 1} if self.device == "cuda" else {"CPU": 1}
        self.placement = Placement(n, bundle, cfg.runtime.placement)
        self.actors = []
        try:
            x, y = ray.put(ds.x_train.numpy()), ray.put(ds.y_train.numpy())
            for r in range(n):
                held = {"x_train": x, "y_train": y} if kind == "ddp" else {}
                if kind != "ddp" and r == 0:
                    held["x_train"] = x
                if kind != "ddp" and r == n - 1:
                    held["y_train"] = y
                self.actors.append(RemoteWorker.options(**self.placement.options(r)).remote(
                    kind, plan, r, n, microbatches, cfg.runtime.threads, self.device, **held))
            ips = ray.get([a.node_ip.remote() for a in self.actors])
            host = "127.0.0.1" if len(set(ips)) == 1 else ips[0]  # one node: over loopback only
            port = ray.get(self.actors[0].open_rendezvous.remote(host))
            ray.get([a.connect.remote(host, port) for a in self.actors])
        except BaseException:
            self.close()
            raise

    def run(self, start: int, stop: int) -> list[float]:
        """Train steps start..stop-1 on every worker; the minibatch losses."""
        out = ray.get([a.run.remote(start, stop) for a in self.actors])
        if self.kind == "ddp":  # equal shares: the minibatch mean is the mean of the workers' means
            return [sum(v) / self.n for v in zip(*(o["losses"] for o in out))]
        return out[-1]["losses"]

    def gradients(self, step: int) -> dict[str, torch.Tensor]:
        grads = ray.get([a.gradients.remote(step) for a in self.actors])
        if self.kind == "ddp":
            return grads[0]
        out = {}
        for g in grads:
            out.update(g)
        return out

    def model(self) -> torch.nn.Sequential:
        parts = ray.get([a.modules.remote() for a in self.actors])
        return assemble(parts[:1] if self.kind == "ddp" else parts)

    def close(self) -> None:
        release(self.actors, self.placement)
        self.actors, self.placement = [], None
