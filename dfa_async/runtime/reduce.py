"""The replicas of one stage (runtime.replicas): an R-rank process group whose only collective is a sum,
the one place where the R pipelines meet. On one node, shared-memory rings (shm.py): every replica sends
its tensor to every other and adds the R tensors in replica order, so each gets the same bits. Measured
on a 2-core machine (the bench's profile.json), a 16 MB sum takes 12 ms this way and 14 ms as gloo's
all-reduce, and the 1024-wide grid of 1 stage x 2 replicas ran 53 steps/s with these sums against 45
with gloo's; the rings also need no I/O thread. Across nodes gloo, and nccl between stages with a GPU
each; host transports take a CUDA stage's tensors through pinned memory. Every replica of a stage issues
the same sums in the same order (its schedule is the same), which is all a collective needs. Nothing here
knows about Ray or a model."""
from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from .plane import CONNECT, PeerLost, process_group


class Replicas:
    """Replica `rank` of `world` of stage `stage`; `store`: the rendezvous store (replica 0's node)."""

    def __init__(self, stage: int, rank: int, world: int, store_host: str, port: int, backend: str, host: str,
                 device: torch.device, timeout_s: float, ring_bytes: int = 1 << 20):
        self.stage, self.rank, self.world, self.backend = stage, rank, world, backend
        self.device = torch.device(device)
        self.staged = self.device.type == "cuda" and backend != "nccl"  # through pinned host memory
        self.sums = 0  # sums so far
        self.scratch: dict[tuple, list[torch.Tensor]] = {}  # shm: the peers' tensors land here, reused
        try:
            store = dist.TCPStore(store_host, port, world, is_master=False, timeout=timedelta(seconds=timeout_s))
            self.pg = process_group(backend, dist.PrefixStore(f"replicas-{stage}", store), rank, world, host,
                                    timeout_s, self.device, ring_bytes, pairs=None if backend != "shm" else
                                    [(a, b) for a in range(world) for b in range(world) if a != b])
        except (RuntimeError, OSError) as err:
            raise PeerLost(f"stage {stage} replica {rank}: cannot join its replicas' group ({_first(err)})",
                           phase=CONNECT) from err

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """t summed over the replicas (every replica gets the same bits), on t's device. t is a scratch
        tensor of the caller's: it may hold the sum afterwards. The sum may be a buffer of this group's,
        valid until its next sum of a tensor of that size (reused: a fresh 8 MB tensor costs its page
        faults at every step)."""
        buf = t.detach().contiguous()
        if self.staged:
            host = torch.empty(buf.shape, dtype=buf.dtype, pin_memory=True)
            host.copy_(buf)
            buf = host
        try:
            if self.backend == "shm":
                tag, self.sums = self.sums % (1 << 27), self.sums + 1  # shm matches messages by tag
                key = (buf.numel(), buf.dtype)
                if key not in self.scratch:
                    self.scratch[key] = [torch.empty_like(buf) for _ in range(self.world - 1)]
                buf = exchange_sum(self.pg, self.rank, self.world, buf, tag, self.scratch[key])
            else:
                self.pg.allreduce([buf]).wait()
        except (RuntimeError, OSError) as err:
            raise PeerLost(f"stage {self.stage} replica {self.rank}: the replicas' sum failed ({_first(err)})") from err
        return buf.to(t.device, non_blocking=True)


def exchange_sum(pg, rank: int, world: int, buf: torch.Tensor, tag: int,
                 scratch: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The sum over a point-to-point group (shm): every rank's tensor to every other, then the sum in rank
    order, the same bits on each. The peers' tensors land in `scratch` (world - 1 tensors like buf), and
    the sum in the first of the parts: buf or scratch, both the caller's to overwrite."""
    spare = iter(scratch if scratch is not None else [torch.empty_like(buf) for _ in range(world - 1)])
    parts = [buf if r == rank else next(spare) for r in range(world)]
    works = [pg.recv([parts[r]], r, tag) for r in range(world) if r != rank]
    works += [pg.send([buf], r, tag) for r in range(world) if r != rank]
    for work in works:
        work.wait()
    total = parts[0]
    for part in parts[1:]:
        total += part
    return total


def _first(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else repr(err)
