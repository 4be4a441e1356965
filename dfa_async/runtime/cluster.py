"""The control plane on Ray: joining or starting Ray, one placement-group bundle per stage, spawning and
killing the stage actors. Actors are ordinary (single-threaded) Ray actors, so each runs its calls in
submission order; the driver relies on that when it queues a window behind the one running."""
from __future__ import annotations

import os

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..config import ConfigError

PLACEMENT_TIMEOUT_S = 300


def start_ray(cfg, stages: int) -> bool:
    """Join runtime.address, or start a local instance for the run; True when this call started it."""
    if ray.is_initialized():
        return False
    if cfg.runtime.address:
        ray.init(address=cfg.runtime.address, log_to_driver=False)
        return False
    cpus = cfg.runtime.num_cpus or max(stages, os.cpu_count() or 1)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return True


class Placement:
    """One bundle per stage ({CPU: 1}, plus a GPU where stages run on GPUs) in a placement group."""

    def __init__(self, n: int, bundle: dict, strategy: str):
        self.n, self.bundle, self.strategy = n, bundle, strategy
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
