"""The driver's side of the layer-parallel runtime on Ray. The driver steers: it starts one actor per
stage (per stage and replica: runtime.replicas pipelines side by side), connects them into their data
planes, puts the dataset into the object store once, and asks every stage to run a window of the
schedule; the stages exchange every tensor among themselves. It collects losses and timestamps at the
end of each window, gathers state at drained boundaries (replica 0's: the replicas are identical), and
replaces every stage when one dies (the run then resumes from the last checkpoint)."""
from __future__ import annotations

import os
import uuid

import ray
import torch

from .. import wire
from ..config import ConfigError
from ..stage import Plan, StageFailure, Window, assemble
from . import shm
from .cluster import Placement, release, shutdown, start_ray, time_shared
from .plane import PeerLost
from .worker import StageWorker

RECOVERABLE = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
               ray.exceptions.ObjectLostError)


class _Actor(StageWorker):
    def node_ip(self) -> str:
        return ray.util.get_node_ip_address()

    def gpu_ids(self) -> list:
        return [str(g) for g in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]


def root_cause(refs, first: StageFailure, order: list) -> StageFailure:
    """The failure to report when stages fail on their channels. A stage reaches the rendezvous, then
    connects its channels, then uses them (the hello in one global order), so a failure in an earlier
    phase, or on an earlier channel of the same phase, is the cause of the later ones (peers that time out
    waiting for a stage stuck there). Waits for every stage's answer (each bounded by
    runtime.peer_timeout_s)."""
    lost = []
    for ref in refs:
        try:
            ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, PeerLost):
                ch = err.cause.channel
                lost.append((err.cause.phase, order.index(ch) if ch in order else -1, str(err.cause)))
        except RECOVERABLE:
            pass
    return StageFailure(f"a stage failed ({min(lost)[2]})") if lost else first


def choose_transport(setting: str, stages: int, nodes: int, own_gpu: bool, shm_ok: bool) -> tuple[str, str]:
    """The data plane for `stages` stages on `nodes` nodes, and why; a ConfigError for a setting that
    cannot work there. `auto`: nccl with a GPU per stage, shm on one node, gloo across nodes."""
    if stages == 1:
        return "none", "one stage: nothing to exchange"
    if setting == "auto":
        if own_gpu:
            return "nccl", "a GPU per stage: device memory to device memory"
        if nodes == 1 and shm_ok:
            return "shm", "every stage on one node: shared-memory rings"
        if nodes == 1:
            return "gloo", "one node, but shared-memory rings need x86-64 Linux with /dev/shm"
        return "gloo", f"stages on {nodes} nodes: TCP, each stage listening on its own node's address"
    if setting == "shm" and nodes > 1:
        raise ConfigError(f"runtime.transport: shm needs every stage on one node; the stages are on {nodes} nodes. "
                          "Use gloo or auto")
    if setting == "shm" and not shm_ok:
        raise ConfigError("runtime.transport: shm needs x86-64 Linux with /dev/shm; use gloo or auto")
    if setting == "nccl" and not own_gpu:
        raise ConfigError("runtime.transport: nccl needs a whole GPU per stage (runtime.gpus_per_stage = 1); "
                          "use shm, gloo or auto")
    return setting, "runtime.transport"


RemoteWorker = ray.remote(_Actor)


def replicas_for(setting, stages: int, units: float, batch: int) -> int:
    """runtime.replicas as a number: `auto` takes as many copies of `stages` stages as `units` (the GPUs or
    CPUs there are for them) hold, at least 1, and the largest such count that divides the batch."""
    if setting != "auto":
        return setting
    most = max(1, int(units // stages + 1e-9))
    return max(r for r in range(1, most + 1) if batch % r == 0)


class RayPipeline:
    def __init__(self, plan: Plan, ds):
        cfg = plan.cfg
        self.plan, self.cfg = plan, cfg
        self.partition = plan.partition()
        wanted = cfg.runtime.replicas if cfg.runtime.replicas != "auto" else 1
        self.started_ray = start_ray(cfg, len(self.partition) * wanted)
        self.replicas = 1
        self.placement, self.actors, self.restarts = None, [], 0
        self.namespace = f"dfa-async-{uuid.uuid4().hex[:8]}"
        try:
            self._setup(ds)
        except BaseException:
            self.close()
            raise

    def _setup(self, ds) -> None:
        cfg, n = self.cfg, len(self.partition)
        gpus, share = ray.cluster_resources().get("GPU", 0), cfg.runtime.gpus_per_stage
        R = cfg.runtime.replicas if cfg.runtime.replicas != "auto" else 1  # auto: at least one copy must fit
        use_gpu = cfg.runtime.device == "cuda" or (cfg.runtime.device == "auto" and gpus >= n * R * share)
        if cfg.runtime.device == "cuda" and gpus < n * R * share:
            actors = f"{n} stages x {R} replicas" if R > 1 else f"{n} stages"
            raise ConfigError(f"runtime.device: cuda needs {share:g} GPU per stage ({actors}: {n * R * share:g}); "
                              f"the cluster has {gpus:g}. Use runtime.gpus_per_stage = {max(gpus, 1) / (n * R):g} to "
                              "share, runtime.device = cpu, or fewer runtime.blocks_per_stage"
                              + (" or runtime.replicas" if R > 1 else ""))
        if cfg.runtime.transport == "nccl" and not (use_gpu and share == 1):
            raise ConfigError("runtime.transport: nccl needs a whole GPU per stage (runtime.gpus_per_stage = 1); "
                              "use shm, gloo or auto")
        self.device = "cuda" if use_gpu else "cpu"
        units = gpus / share if use_gpu else ray.cluster_resources().get("CPU", 0)
        self.replicas = replicas_for(cfg.runtime.replicas, n, units, cfg.train.batch_size)
        if cfg.runtime.replicas == "auto":
            print(f"dfa-async: runtime.replicas = auto: {self.replicas} (the cluster's {units:g} "
                  f"{'GPUs' if use_gpu else 'CPUs'} for {n} stage(s))", flush=True)
        # Stages that can only be placed on this machine share its cores (see cluster.time_shared); a
        # cluster's one node elsewhere may have other cores.
        alive = [node for node in ray.nodes() if node["Alive"]]
        self.this_machine_only = len(alive) == 1 and alive[0]["NodeID"] == ray.get_runtime_context().get_node_id()
        self.own_gpu = use_gpu and share == 1  # nccl needs a GPU per rank
        self.bundle = {"GPU": share, "CPU": 1} if use_gpu else {"CPU": 1}
        # The first stage reads the inputs, the head the labels, from the object store.
        self.arrays = {k: getattr(ds, k).numpy() for k in ("x_train", "y_train", "x_test", "y_test")}
        self.n_test = len(ds.x_test)
        self._spawn()

    def _spawn(self) -> None:
        n, R = len(self.partition), self.replicas
        rt = self.cfg.runtime
        # Put afresh for every set of stages: a replaced stage then pulls the data from the driver's node,
        # never from a copy on a node that died or that it cannot reach (seen with two hosts cut apart: the
        # new stage's pull from the other host's copy hung for minutes).
        self.data = {k: ray.put(v) for k, v in self.arrays.items()}
        self.placement = Placement(n, self.bundle, rt.placement, fixed=self.started_ray, autoscale=rt.autoscale,
                                   timeout_s=rt.placement_timeout_s, replicas=R)
        # Actor r * n + k is stage k of replica r.
        self.actors = []
        for r in range(R):
            for i, ids in enumerate(self.partition):
                held = {}
                if i == 0:
                    held.update(x_train=self.data["x_train"], x_test=self.data["x_test"])
                if i == n - 1:
                    held.update(y_train=self.data["y_train"], y_test=self.data["y_test"])
                # Readable in `ray list actors` and the dashboard; a namespace of the run's own keeps two runs on
                # one cluster apart, and a replaced stage gets a new name (the old one may not be freed yet).
                name = (f"dfa-stage-{i}" + (f"-replica-{r}" if R > 1 else "")
                        + (f"-restart{self.restarts}" if self.restarts else ""))
                self.actors.append(RemoteWorker.options(name=name, namespace=self.namespace,
                                                        **self.placement.options(r * n + i)).remote(
                    self.plan, ids, i, n, self.n_test, rt.threads, self.device, **held, replica=r, replicas=R))
        self.hosts = self.pids = self.ips = self.gpu_ids = [None] * (n * R)
        self.bound = [{} for _ in range(n * R)]
        self.transport, self.why, self.lost = "none", "", None
        try:  # a failure here is raised at the first call, inside the run's restart loop
            self._connect()
        except StageFailure as err:
            self.lost = err

    def _connect(self) -> None:
        n, R = len(self.partition), self.replicas
        self.pids = self._get([a.pid.remote() for a in self.actors], self.cfg.runtime.placement_timeout_s)
        self.ips = self._get([a.node_ip.remote() for a in self.actors])
        self.gpu_ids = self._get([a.gpu_ids.remote() for a in self.actors])
        self.transport, self.why = choose_transport(self.cfg.runtime.transport, n, len(set(self.ips)),
                                                    self.own_gpu, shm.available())
        # Stages on one node meet over loopback; across nodes each listens on its own node's address and
        # a pipeline's rendezvous on its stage 0's (a stage's replicas' on replica 0's).
        self.hosts = ["127.0.0.1"] * (n * R) if len(set(self.ips)) == 1 else list(self.ips)
        if n > 1:
            ports = self._get([self.actors[r * n].open_rendezvous.remote(self.hosts[r * n]) for r in range(R)])
            refs = [a.connect.remote(self.hosts[i - i % n], ports[i // n], self.transport, h)
                    for i, (a, h) in enumerate(zip(self.actors, self.hosts))]
            try:
                self.bound = self._get(refs)
            except StageFailure as err:
                raise root_cause(refs, err, wire.channels(n)) from err
        if R > 1:
            # nccl between whole GPUs, else shared memory on one node and gloo across nodes (host memory;
            # GPU-sharing stages through pinned memory); runtime.transport = gloo asks for gloo here too
            one_node = len(set(self.ips)) == 1 and shm.available() and self.cfg.runtime.transport != "gloo"
            backend = "nccl" if self.own_gpu else "shm" if one_node else "gloo"
            ports = self._get([self.actors[k].open_rendezvous.remote(self.hosts[k], "replicas") for k in range(n)])
            self._get([a.join_replicas.remote(self.hosts[i % n], ports[i % n], backend, h)
                       for i, (a, h) in enumerate(zip(self.actors, self.hosts))])
            for bound in self.bound:
                bound["replicas"] = backend

    def ping(self) -> list[float | None]:
        """Every channel once (wire.ping); each non-head stage's cycle time."""
        refs = [a.ping.remote() for a in self.actors]
        try:
            return self._get(refs)
        except StageFailure as err:
            raise root_cause(refs, err, wire.channels(len(refs))) from err

    def describe(self) -> dict:
        return {"pids": self.pids, "partition": self.partition, "device": self.device, "transport": self.transport,
                "replicas": self.replicas, "stages": self.plan_rows()}

    def warnings(self) -> list[str]:
        """CPU stages that can only be placed on this machine and need more cores than it has."""
        if self.device != "cpu" or not self.this_machine_only:
            return []
        note = time_shared(len(self.partition), self.cfg.runtime.threads, len(os.sched_getaffinity(0)), self.replicas)
        return [note] if note else []

    def plan_rows(self) -> list[dict]:
        """Each stage actor (stage, replica): its blocks, node, GPUs and the address its data plane bound
        (the `stages` record and the doctor's table)."""
        n = len(self.partition)
        return [{"stage": i % n, "replica": i // n, "blocks": self.partition[i % n], "pid": pid, "node": ip,
                 "gpus": gpus, **bound}
                for i, (pid, ip, gpus, bound) in enumerate(zip(self.pids, self.ips, self.gpu_ids, self.bound))]

    def _kill(self) -> None:
        release(self.actors, self.placement)
        self.actors, self.placement = [], None

    def restart(self) -> None:
        """Replace every stage (a dead one, and the others, whose process group lost a member)."""
        self._kill()
        self.restarts += 1
        self._spawn()

    def _get(self, refs, timeout_s: float | None = None):
        """Results of `refs`, waiting on all at once: the first failure is raised as soon as it is known
        (its peers may still be blocked in a receive), as StageFailure when a stage or its peer died, or
        when `timeout_s` passes first (stages that never start)."""
        many = isinstance(refs, list)
        pending = list(refs) if many else [refs]
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=timeout_s)
                if not ready:
                    late = [i for i, r in enumerate(refs if many else [refs]) if r in pending]
                    raise StageFailure(f"stage(s) {late} did not answer within {timeout_s:g} s "
                                       "(runtime.placement_timeout_s)")
                ray.get(ready[0])
            return ray.get(refs)
        except RECOVERABLE as err:
            raise StageFailure(f"{self._which(refs, ready[0])} died ({type(err).__name__})") from err
        except ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, RECOVERABLE + (PeerLost,)):
                raise StageFailure(f"a stage failed ({err.cause})") from err
            raise

    def _which(self, refs, failed) -> str:
        """The stage whose call `failed` was, with its blocks, node and pid where they are known."""
        if not isinstance(refs, list) or len(refs) != len(self.actors) or failed not in refs:
            return "a stage actor"
        k = refs.index(failed)
        n = len(self.partition)
        where = [f"blocks {','.join(map(str, self.partition[k % n]))}"] + ([f"replica {k // n}"] if self.replicas > 1
                                                                          else [])
        for name, values in (("node", getattr(self, "ips", None)), ("pid", getattr(self, "pids", None))):
            if values and k < len(values):
                where.append(f"{name} {values[k]}")
        return f"stage {k % n} ({', '.join(where)})"

    # -- windows, evaluation, state ------------------------------------------------------------------
    def _connected(self) -> None:
        if self.lost is not None:
            raise self.lost

    def submit(self, start: int, stop: int):
        self._connected()
        return start, stop, [a.run.remote(start, stop) for a in self.actors]

    def collect(self, handle) -> Window:
        start, stop, refs = handle
        results = self._get(refs)
        n = len(self.partition)
        heads = [results[r * n + n - 1]["losses"] for r in range(self.replicas)]
        # The minibatch's loss: the mean of the replicas' (each the mean over an equal share of its rows).
        losses = heads[0] if self.replicas == 1 else [sum(ls) / self.replicas for ls in zip(*heads)]
        return Window(start, stop, losses, [r["timeline"] for r in results], [r["stats"] for r in results],
                      self.replicas)

    @property
    def first_pipeline(self) -> list:
        """Replica 0's stages: they evaluate, are probed and hold the state (every replica's is the same)."""
        return self.actors[:len(self.partition)]

    def evaluate(self) -> tuple[float, float]:
        self._connected()
        correct, total, n = self._get([a.evaluate.remote() for a in self.first_pipeline])[-1]
        return correct / n, total / n

    def state(self) -> dict:
        out = {}
        for part in self._get([a.state.remote() for a in self.first_pipeline]):
            out.update(part)
        return out

    def load_state(self, state: dict) -> None:
        self._connected()
        n = len(self.partition)
        self._get([a.load_state.remote({k: state[k] for k in map(str, self.partition[i % n])})
                   for i, a in enumerate(self.actors)])

    def align(self, n: int, data: str = "train", mode: str = "train") -> list[dict]:
        """Alignment of every block on the first n samples of `data`: a forward through the stages,
        then a backprop chain back through them (see probe.py); only activations and gradients of the
        probe batch pass between the actors, as Ray objects."""
        ref = None
        for a in self.first_pipeline:
            ref = a.probe_forward.remote(n, ref, data, mode)
        e, g, parts = ref, None, []
        for a in reversed(self.first_pipeline):
            blocks, g = a.probe_backward.options(num_returns=2).remote(g, e)
            parts.insert(0, blocks)
        return [b for part in self._get(parts) for b in part]

    def model(self) -> torch.nn.Sequential:
        return assemble(self._get([a.modules.remote() for a in self.first_pipeline]))

    def close(self) -> None:
        self._kill()
        if self.started_ray:
            shutdown()
