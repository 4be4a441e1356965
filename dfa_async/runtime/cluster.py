"""The control plane on Ray: joining or starting Ray, one placement-group bundle per stage, spawning and
killing the stage actors. Actors are ordinary (single-threaded) Ray actors, so each runs its calls in
submission order; the driver relies on that when it queues a window behind the one running."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..config import ConfigError
from . import reaper

JOIN_CHECK_S = 5  # seconds to wait for an answer at runtime.address before saying nothing is there
# Where Ray 2.60 announces that a new local instance uses token authentication (its default when
# RAY_AUTH_MODE is unset). The instance is this process's own, so the announcement is noise; a renamed
# logger upstream only brings the line back.
_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"


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
        _init(address=address, log_to_driver=False)
        print(f"dfa-async: joined the Ray cluster at {address} ({ray.cluster_resources().get('CPU', 0):g} CPUs, "
              f"{ray.cluster_resources().get('GPU', 0):g} GPUs)", flush=True)
        return False
    start_local(cfg.runtime.num_cpus or max(stages, os.cpu_count() or 1))
    return True


def time_shared(stages: int, threads: int, cores: int, replicas: int = 1) -> str | None:
    """The warning for CPU stages that, all on one machine, need more cores than it has (None if they fit):
    they time-share the cores, so every wait for a peer becomes a sleep and a wake-up, and the stages evict
    each other from the caches at every switch."""
    if stages * replicas * threads <= cores:
        return None
    fit = max(cores // threads, 1)
    if replicas > 1:
        return (f"runtime.replicas: {stages} stages x {replicas} replicas x {threads} thread(s) on this machine's "
                f"{cores} cores time-share them; use at most {max(fit // stages, 1)} replica(s), or \"auto\"")
    return (f"runtime.blocks_per_stage: {stages} stages x {threads} thread(s) on this machine's {cores} cores "
            f"time-share them (4 stages of a 576-wide model on 2 cores ran at 0.78x of what they compute without "
            f"waiting, docs/results.md); group the blocks into at most {fit} stage(s) with runtime.blocks_per_stage, "
            f"or set it to \"auto\" with runtime.num_stages = {fit}")


_watcher = None


def start_local(cpus: int) -> None:
    """A private local Ray instance, watched (reaper.py) so that a driver killed with kill -9 leaves none of
    its processes behind. End it with `shutdown()`."""
    global _watcher
    before = {p for p, _ in reaper.descendants(os.getpid())}
    # Ray starts its workers at nice 15 (its worker_niceness): with anything else busy on the machine the
    # stages, which do all of the run's compute, would starve behind it (measured: a 10-epoch run beside
    # one single-process run took 5-10x longer). A private instance's workers run at the driver's priority;
    # RAY_worker_niceness in the environment still wins.
    ours = "RAY_worker_niceness" not in os.environ
    if ours:
        os.environ["RAY_worker_niceness"] = str(os.nice(0))
    try:
        with _quiet(_TOKEN_LOGGER):
            _init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                  configure_logging=False)
    finally:
        if ours:
            del os.environ["RAY_worker_niceness"]
    _watcher = reaper.watch(os.getpid(), before)


def _init(**kwargs) -> None:
    """ray.init, then the driver's SIGTERM handler back in force. ray.init sets a Python one (exit with the
    signal: the run then names its kept checkpoint), but the core worker it starts puts a native failure
    handler over it at the OS level, which prints a stack report of the driver before that line. The
    stages, other processes, keep Ray's."""
    ray.init(**kwargs)
    handler = signal.getsignal(signal.SIGTERM)
    if callable(handler) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def _quiet(name: str):
    """Warnings of logger `name` dropped inside the block (errors still show)."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def shutdown() -> None:
    """Stop the instance `start_local` started, then its watcher."""
    global _watcher
    ray.shutdown()
    if _watcher is not None:
        _watcher.kill()
        _watcher.wait()
        _watcher = None


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
    """One bundle per stage actor ({CPU: 1}, plus a GPU where stages run on GPUs) in a placement group:
    `n` stages times `replicas`, bundle r * n + k for stage k of replica r."""

    def __init__(self, n: int, bundle: dict, strategy: str, fixed: bool = False, autoscale: bool = False,
                 timeout_s: float = 300.0, replicas: int = 1):
        """`fixed`: a local instance of the run's own. A request beyond the cluster's total resources fails
        at once unless the cluster can grow (`autoscale`); one that fits in total but not now (other jobs
        hold the resources) waits up to `timeout_s`."""
        grid = f"{n} stages x {replicas} replicas" if replicas > 1 else f"{n} stages"
        n *= replicas
        self.n, self.bundle, self.strategy, self.pg = n, bundle, strategy, None
        total = ray.cluster_resources()
        short = {k: v * n for k, v in bundle.items() if total.get(k, 0) < v * n - 1e-9}
        if short and (fixed or not autoscale):
            have = {k: total.get(k, 0) for k in short}
            fewer = "fewer stages or replicas" if replicas > 1 else "fewer stages"
            fix = (f"raise runtime.num_cpus or use {fewer}" if fixed else f"use {fewer}, a larger cluster, "
                   "or runtime.autoscale = true if the cluster adds nodes on demand")
            key = "runtime.replicas" if replicas > 1 else "runtime.blocks_per_stage"
            raise ConfigError(f"{key}: {grid} need {short}, but the cluster has {have} in all; {fix}")
        if strategy == "strict_spread" and not autoscale:
            fit = [node for node in ray.nodes() if node["Alive"]
                   and all(node["Resources"].get(k, 0) >= v - 1e-9 for k, v in bundle.items())]
            if len(fit) < n:
                raise ConfigError(f"runtime.placement: strict_spread puts each of the {n} stages on a node of its own, "
                                  f"and the cluster has {len(fit)} node(s) that can hold one ({bundle}); use spread, "
                                  "fewer stages, or more nodes")
        self.pg = placement_group([dict(bundle)] * n, strategy=strategy.upper())
        try:
            ray.get(self.pg.ready(), timeout=1.0)
        except ray.exceptions.GetTimeoutError:
            print(f"dfa-async: waiting up to {timeout_s:g} s for the cluster to place {n} stages of {bundle} "
                  f"(free now: {ray.available_resources()})", flush=True)
            try:
                ray.get(self.pg.ready(), timeout=max(timeout_s - 1.0, 0.1))
            except ray.exceptions.GetTimeoutError:
                self.remove()
                raise ConfigError(f"runtime.placement_timeout_s: the cluster could not place {n} stages of {bundle} "
                                  f"({strategy}) within {timeout_s:g} s; free: {ray.available_resources()}. Use "
                                  "fewer stages, wait for other jobs, or raise the timeout") from None

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
