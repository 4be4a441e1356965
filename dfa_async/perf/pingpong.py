"""The link between two workers of this machine, measured: a ping-pong of a small and of a large message
between two processes over a data-plane transport (`shm`: the stages' rings; `gloo`: what the backprop
baselines use), and the rate of a 16 MB all-reduce (gloo's: what DDP does with the gradients; shm's: the
sum of two replicas of a stage, runtime/reduce.py). One-way time of the small message is the latency; the large one's extra time gives the
bandwidth. Between processes on CPUs both ends' cores move the bytes (`host` links)."""
from __future__ import annotations

import statistics
import time

import torch

from .. import process
from ..runtime.plane import Rendezvous, process_group
from ..runtime.reduce import exchange_sum
from ..runtime.shm import ShmGroup

SMALL, LARGE, REDUCE = 64, 4 << 20, 16 << 20
REPEATS = 30
BATCHES = 3


class PingPong:
    def __init__(self, rank: int):
        process.setup(1)
        self.rank, self.rendezvous, self.pg = rank, None, None

    def open_rendezvous(self, host: str) -> int:
        self.rendezvous = Rendezvous(host, 2, 60)
        return self.rendezvous.port

    def connect(self, host: str, port: int, transport: str) -> None:
        import torch.distributed as dist
        from datetime import timedelta

        store = self.rendezvous.store if self.rendezvous else dist.TCPStore(
            host, port, 2, is_master=False, timeout=timedelta(seconds=60))
        self.pg = process_group(transport, dist.PrefixStore(transport, store), self.rank, 2, host, 60,
                                torch.device("cpu"), ring_bytes=2 * LARGE + 4096)

    def allreduce(self, nbytes: int, repeats: int = 5) -> float:
        """Seconds of one all-reduce (sum) of nbytes between the two ranks: the median of `repeats`."""
        buf = torch.ones(nbytes // 4)
        if isinstance(self.pg, ShmGroup):
            def once(i):
                exchange_sum(self.pg, self.rank, 2, buf, i)
        else:
            def once(i):
                self.pg.allreduce([buf]).wait()
        once(0)
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            once(i + 1)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def run(self, nbytes: int, repeats: int = REPEATS, batches: int = BATCHES) -> float:
        """Seconds of one one-way trip (rank 0's measure; both ranks must call it): half the median round
        trip of a batch, the smallest over `batches` batches. On a shared machine a few round trips meet a
        context switch (a mean of 30 once read 6x the latency that every other bench measured), and a
        whole batch can meet a busy spell (a median once read 40x: Ray's workers still starting)."""
        buf = torch.zeros(nbytes // 4)
        peer = 1 - self.rank
        medians = []
        for b in range(batches):
            trips = []
            for i in range(repeats + 2):
                tag = b * (repeats + 2) + i
                t0 = time.perf_counter()
                if self.rank == 0:
                    self.pg.send([buf], peer, tag).wait()
                    self.pg.recv([buf], peer, tag).wait()
                else:
                    self.pg.recv([buf], peer, tag).wait()
                    self.pg.send([buf], peer, tag).wait()
                trips.append(time.perf_counter() - t0)
            medians.append(statistics.median(trips[2:]) / 2)
        return min(medians)


def measure(transport: str) -> dict:
    """Latency, bandwidth and per-message CPU time of `transport` between two Ray actors of this node."""
    import ray

    actors = [ray.remote(num_cpus=1)(PingPong).remote(r) for r in range(2)]
    try:
        port = ray.get(actors[0].open_rendezvous.remote("127.0.0.1"))
        ray.get([a.connect.remote("127.0.0.1", port, transport) for a in actors])
        small = ray.get([a.run.remote(SMALL) for a in actors])[0]
        large = ray.get([a.run.remote(LARGE) for a in actors])[0]
        reduce_s = ray.get([a.allreduce.remote(REDUCE) for a in actors])[0]
    finally:
        for a in actors:
            ray.kill(a)
    bandwidth = (LARGE - SMALL) / max(large - small, 1e-9)
    # A one-way trip of a small message is the sender's and the receiver's software time plus the wake-up.
    out = {"latency_s": small, "bandwidth": bandwidth, "host": True, "per_message_s": small / 2}
    if reduce_s:
        out["allreduce_rate"] = REDUCE / reduce_s
    return out
