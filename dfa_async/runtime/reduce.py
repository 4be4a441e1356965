"""The replicas of one stage (runtime.replicas): an R-rank process group whose only collective is a sum,
the one place where the R pipelines meet. gloo over host memory (a CPU stage, or GPU-sharing stages
through pinned memory), nccl between stages with a GPU each. Every replica of a stage issues the same
sums in the same order (its schedule is the same), which is all a collective needs. Nothing here knows
about Ray or about a model."""
from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from .plane import CONNECT, PeerLost, process_group


class Replicas:
    """Replica `rank` of `world` of stage `stage`; `store`: the rendezvous store (replica 0's node)."""

    def __init__(self, stage: int, rank: int, world: int, store_host: str, port: int, backend: str, host: str,
                 device: torch.device, timeout_s: float):
        self.stage, self.rank, self.world, self.backend = stage, rank, world, backend
        self.device = torch.device(device)
        self.staged = self.device.type == "cuda" and backend == "gloo"  # through pinned host memory
        try:
            store = dist.TCPStore(store_host, port, world, is_master=False, timeout=timedelta(seconds=timeout_s))
            self.pg = process_group(backend, dist.PrefixStore(f"replicas-{stage}", store), rank, world, host,
                                    timeout_s, self.device)
        except (RuntimeError, OSError) as err:
            raise PeerLost(f"stage {stage} replica {rank}: cannot join its replicas' group ({_first(err)})",
                           phase=CONNECT) from err

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """t summed over the replicas (every replica gets the same bits), on t's device. t is a scratch
        tensor of the caller's: it may hold the sum afterwards."""
        buf = t.detach().contiguous()
        if self.staged:
            host = torch.empty(buf.shape, dtype=buf.dtype, pin_memory=True)
            host.copy_(buf)
            buf = host
        try:
            self.pg.allreduce([buf]).wait()
        except (RuntimeError, OSError) as err:
            raise PeerLost(f"stage {self.stage} replica {self.rank}: the replicas' sum failed ({_first(err)})") from err
        return buf.to(t.device, non_blocking=True)


def _first(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else repr(err)
