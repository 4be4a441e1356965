"""The layer-parallel runtime on Ray: one actor per stage, the driver's side of the schedule, placement
and transport. Nothing here knows about a particular model: a stage actor wraps a `stage.Stage`.

Ordering: each actor is an ordinary (single-threaded) Ray actor, so it runs the calls of one caller in
submission order, and a call whose argument is not ready holds back the calls submitted after it.
The driver submits exactly the ops of `schedule.ops`, so every actor sees a fixed sequence and the run
equals the single-process reference. Async actors or max_concurrency > 1 would give up that order."""
from __future__ import annotations

import copy
import os
import warnings
from collections import deque

import numpy as np
import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from .config import ConfigError
from .stage import Plan, Stage, StageFailure

PLACEMENT_TIMEOUT_S = 300
RECOVERABLE = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
               ray.exceptions.ObjectLostError)


def _tensor(x, device):
    if isinstance(x, np.ndarray):
        with warnings.catch_warnings():
            # Object-store arrays are read-only (zero-copy); blocks never write into their input.
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(x)
    return x.to(device, non_blocking=True)


def _out(t: torch.Tensor, transport: str):
    if transport == "nccl":
        return t.detach()  # stays on the GPU
    if transport == "gloo":
        return t.detach().cpu()
    return t.detach().cpu().numpy()


class StageActor:
    """One stage on one device. forward/update are the schedule's ops; the rest is inspection."""

    def __init__(self, plan: Plan, ids: list[int], threads: int, device: str):
        torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.stage = Stage(plan, ids, device=self.device)

    def pid(self) -> int:
        return os.getpid()

    def forward(self, step: int, x, y=None, transport: str = "object_store"):
        out = self.stage.forward(step, _tensor(x, self.device), None if y is None else _tensor(y, self.device))
        if self.stage.is_head:
            loss, e = out
            return loss, e.cpu().numpy()
        return _out(out, transport)

    def update(self, step: int, e) -> list[int]:
        return self.stage.update(step, _tensor(e, self.device))

    def evaluate(self, x):
        return self.stage.evaluate(_tensor(x, self.device)).cpu().numpy()

    def state(self) -> dict:
        return self.stage.state()

    def load_state(self, state: dict) -> None:
        self.stage.load_state(state)

    def modules(self) -> dict:
        cpu = self.device.type == "cpu"
        return {k: m if cpu else copy.deepcopy(m).cpu() for k, m in self.stage.modules().items()}

    def take_timeline(self) -> list:
        return self.stage.take_timeline()


# Ray Direct Transport needs the flag on the class; the object-store path keeps a plain actor.
RemoteStage = ray.remote(StageActor)
RemoteStageRDT = ray.remote(enable_tensor_transport=True)(StageActor)


def start_ray(cfg, stages: int) -> bool:
    """Join runtime.address, or start a local instance for the run; True when this call started it."""
    if ray.is_initialized():
        return False
    if cfg.runtime.address:
        ray.init(address=cfg.runtime.address, log_to_driver=False)
        return False
    cpus = cfg.runtime.num_cpus or max(stages, os.cpu_count() or 1)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    return True


class RayPipeline:
    """The driver's side: submits the schedule's ops to the stage actors without waiting, throttled
    so that at most depth + 1 steps are in flight."""

    def __init__(self, plan: Plan):
        cfg = plan.cfg
        self.plan, self.cfg = plan, cfg
        self.partition = plan.partition()
        self.started_ray = start_ray(cfg, len(self.partition))
        self.pg, self.actors = None, []
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        cfg = self.cfg
        gpus = ray.cluster_resources().get("GPU", 0)
        use_gpu = cfg.runtime.device == "cuda" or (cfg.runtime.device == "auto" and gpus >= len(self.partition))
        if cfg.runtime.device == "cuda" and gpus < len(self.partition):
            raise ConfigError(f"runtime.device: cuda needs one GPU per stage ({len(self.partition)}); the cluster "
                             f"has {gpus:g}. Use runtime.device = cpu or fewer runtime.stages")
        if cfg.runtime.transport == "nccl" and not use_gpu:
            raise ConfigError("runtime.transport: nccl needs a GPU per stage; use object_store or gloo")
        self.device = "cuda" if use_gpu else "cpu"
        self.bundle = {"GPU": 1, "CPU": 1} if use_gpu else {"CPU": 1}
        self.restarts = 0
        self.in_flight: deque = deque()
        self.errors: dict[int, ray.ObjectRef] = {}
        self._spawn()

    # -- actors -------------------------------------------------------------------------------
    def _spawn(self) -> None:
        n = len(self.partition)
        self.pg = placement_group([dict(self.bundle)] * n, strategy=self.cfg.runtime.placement.upper())
        try:
            ray.get(self.pg.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise ConfigError(f"runtime.stages: the cluster could not place {n} stages of {self.bundle} "
                              f"({self.cfg.runtime.placement}) within {PLACEMENT_TIMEOUT_S} s; it has "
                              f"{ray.available_resources()}. Use fewer stages or a larger cluster") from None
        self.actors = []
        self.rdt = self.cfg.runtime.transport in ("gloo", "nccl") and n > 1
        cls = RemoteStageRDT if self.rdt else RemoteStage
        for i, ids in enumerate(self.partition):
            opts = {"num_cpus": 1, "num_gpus": self.bundle.get("GPU", 0), "scheduling_strategy":
                    PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i)}
            self.actors.append(cls.options(**opts).remote(self.plan, ids, self.cfg.runtime.threads,
                                                                 self.device))
        self.pids = ray.get([a.pid.remote() for a in self.actors])
        if self.rdt:
            from ray.experimental.collective import create_collective_group

            create_collective_group(self.actors, backend=self.cfg.runtime.transport)

    def _kill(self) -> None:
        for a in getattr(self, "actors", []):
            ray.kill(a, no_restart=True)
        self.actors = []
        if self.pg is not None:
            remove_placement_group(self.pg)
            self.pg = None

    def restart(self) -> None:
        """Replace every stage (a dead one and the others, whose queues hold a broken schedule)."""
        self._kill()
        self.in_flight.clear()
        self.errors.clear()
        self.restarts += 1
        self._spawn()

    def _get(self, refs):
        try:
            return ray.get(refs)
        except RECOVERABLE as err:
            raise StageFailure(f"a stage actor died ({type(err).__name__})") from err
        except ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, RECOVERABLE):
                raise StageFailure(f"a stage actor died ({type(err.cause).__name__})") from err
            raise

    # -- the schedule's ops ---------------------------------------------------------------------
    def forward(self, step: int, x: torch.Tensor, y: torch.Tensor):
        h = x.numpy()
        last = len(self.actors) - 1
        for i, actor in enumerate(self.actors[:-1]):
            method = actor.forward
            if self.rdt:
                method = method.options(tensor_transport=self.cfg.runtime.transport)
            h = method.remote(step, h, transport=self.cfg.runtime.transport if self.rdt else "object_store")
        loss, e = self.actors[last].forward.options(num_returns=2).remote(step, h, y.numpy())
        self.errors[step] = e
        self.in_flight.append(loss)
        # Throttle: at most depth + 1 steps in flight keeps every queue and stash bounded.
        while len(self.in_flight) > self.cfg.runtime.depth + 1:
            self._get(self.in_flight.popleft())
        return _LazyLoss(self, loss)

    def update(self, step: int) -> None:
        e = self.errors.pop(step)  # one object, produced by the head; every stage reads it
        for actor in self.actors:
            actor.update.remote(step, e)

    def evaluate(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        """Logits of every batch, pipelined through the stages (all chains submitted, then fetched)."""
        outs = []
        for x in batches:
            h = x.numpy()
            for actor in self.actors:
                h = actor.evaluate.remote(h)
            outs.append(h)
        return [_tensor(o, "cpu") for o in self._get(outs)]

    def state(self) -> dict:
        out = {}
        for part in self._get([a.state.remote() for a in self.actors]):
            out.update(part)
        return out

    def load_state(self, state: dict) -> None:
        self._get([a.load_state.remote({k: state[k] for k in map(str, ids)})
                   for a, ids in zip(self.actors, self.partition)])

    def model(self) -> torch.nn.Sequential:
        blocks = {}
        for part in self._get([a.modules.remote() for a in self.actors]):
            blocks.update(part)
        return torch.nn.Sequential(*[blocks[k] for k in sorted(blocks)])

    def take_timelines(self) -> list[list]:
        return self._get([a.take_timeline.remote() for a in self.actors])

    def close(self) -> None:
        self._kill()
        if self.started_ray:
            ray.shutdown()


class _LazyLoss:
    """The loss of a step, fetched from the head only when the driver logs it."""

    def __init__(self, pipe: RayPipeline, ref: ray.ObjectRef):
        self.pipe, self.ref = pipe, ref

    def __float__(self) -> float:
        return float(self.pipe._get(self.ref))
