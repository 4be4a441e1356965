"""The control plane on Ray: joining or starting Ray, one placement-group bundle per stage, spawning and
killing the stage actors. Actors are ordinary (single-threaded) Ray actors, so each runs its calls in
submission order; the driver relies on that when it queues a window behind the one running."""
from __future__ import annotations

import os
import socket

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..config import ConfigError

PLACEMENT_TIMEOUT_S = 300


JOIN_CHECK_S = 5  # seconds to wait for an answer at runtime.address before saying nothing is there


def start_ray(cfg, stages: int) -> bool:
    """Join a cluster, or start a private local instance for the run; True when this call started one.

    Joined: runtime.address, else $RAY_ADDRESS (set for a job's entrypoint by `ray job submit`). With
    neither, a private instance is started even when another Ray runs on this machine: a plain
    `ray.init()` would join that one unasked, and fail on its own resource arguments."""
    if ray.is_initialized():
        return False
    address = cfg.runtime.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        _check_reachable(address)
        ray.init(address=address, log_to_driver=False)
        print(f"dfa-async: joined the Ray cluster at {address} ({ray.cluster_resources().get('CPU', 0):g} CPUs, "
              f"{ray.cluster_resources().get('GPU', 0):g} GPUs)", flush=True)
        return False
    cpus = cfg.runtime.num_cpus or max(stages, os.cpu_count() or 1)
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    return True


def _check_reachable(address: str) -> None:
    """A host:port address (not `auto`, not a ray:// client URL) must answer within JOIN_CHECK_S:
    Ray itself would retry for minutes without a word."""
    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=JOIN_CHECK_S):
            pass
    except (OSError, ValueError) as err:
        raise ConfigError(f"runtime.address: nothing answers at {address} ({err}); start the cluster "
                          "(ray start --head) or leave runtime.address empty to start a local one") from None


class Placement:
    """One bundle per stage ({CPU: 1}, plus a GPU where stages run on GPUs) in a placement group."""

    def __init__(self, n: int, bundle: dict, strategy: str, fixed: bool = False):
        """`fixed`: the cluster cannot grow (a local instance of the run's own), so a request beyond its
        total resources fails at once instead of after PLACEMENT_TIMEOUT_S."""
        self.n, self.bundle, self.strategy, self.pg = n, bundle, strategy, None
        total = ray.cluster_resources()
        short = {k: v * n for k, v in bundle.items() if total.get(k, 0) < v * n - 1e-9}
        if fixed and short:
            raise ConfigError(f"runtime.stages: {n} stages need {short}, but this Ray instance has only "
                              f"{ {k: total.get(k, 0) for k in short} }; raise runtime.num_cpus or use fewer stages")
        self.pg = placement_group([dict(bundle)] * n, strategy=strategy.upper())
        try:
            ray.get(self.pg.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            self.remove()
            raise ConfigError(f"runtime.stages: the cluster could not place {n} stages of {bundle} ({strategy}) "
                              f"within {PLACEMENT_TIMEOUT_S} s; it has {ray.available_resources()}. Use fewer "
                              "stages or a larger cluster") from None

    def options(self, i: int) -> dict:
        return {"num_cpus": 1, "num_gpus": self.bundle.get("GPU", 0),
                "scheduling_strategy": PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i)}

    def remove(self) -> None:
        if self.pg is not None:
            remove_placement_group(self.pg)
            self.pg = None


def release(actors: list, placement: Placement | None) -> None:
    """Kill the actors (no restarts) and remove their placement group."""
    for a in actors:
        ray.kill(a, no_restart=True)
    if placement is not None:
        placement.remove()
