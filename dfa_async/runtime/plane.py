"""The data plane: a torch.distributed process group (gloo on CPUs, nccl on GPUs) among the stages. Each
stage receives its input from the stage before and sends its output to the next; the head sends the error
e_t to every other stage. All transfers are point-to-point and asynchronous, and a transfer is waited on
only where the schedule needs its tensor: a stage posts the receives of its next inputs before it
computes the current step, and the receive of e_t at its forward(t), waited on at update(t). Transfers
overlap compute.

Backends: `shm` (stages on one node: shared-memory rings, see shm.py), `gloo` (across nodes, host
memory) and `nccl` (CUDA tensors). Why point-to-point for the error and the backend object itself (not
`dist.broadcast`/`dist.isend`): measured between two processes on this 2-core machine, an asynchronous
gloo broadcast of a 8x10 tensor costs ~250 us per step, an `isend`/`irecv` pair through the Python
wrappers ~85 us of CPU, and the same pair on the `ProcessGroupGloo` object ~35 us. Nothing here knows
about Ray or about a model."""
from __future__ import annotations

import math
import socket
from collections import deque
from datetime import timedelta

import torch
import torch.distributed as dist

from .shm import ShmGroup

ERROR_TAG, EVAL_TAG = 1 << 29, 1 << 30  # tag spaces: activations of step t use t mod 2^29


class PeerLost(RuntimeError):
    """A transfer failed or timed out: a peer stage died or can no longer be reached."""


class Rendezvous:
    """Rank 0's key-value store, listening on `host` only (a TCPStore that binds its own port listens on
    every interface); the ranks exchange their gloo/nccl addresses through it."""

    def __init__(self, host: str, world: int, timeout_s: float):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.store = dist.TCPStore(host, self.port, world, is_master=True, master_listen_fd=self.sock.fileno(),
                                   wait_for_workers=False, timeout=timedelta(seconds=timeout_s))


def edges(world: int) -> list[tuple[int, int]]:
    """Who sends to whom: each stage to the next (activations), the head to every other stage (errors)."""
    return sorted({(s, s + 1) for s in range(world - 1)} | {(world - 1, s) for s in range(world - 1)})


def process_group(backend: str, store, rank: int, world: int, host: str, timeout_s: float, device: torch.device,
                  ring_bytes: int = 1 << 20):
    """The backend object of a process group (not the global default group: a stage holds its own)."""
    if backend == "shm":
        return ShmGroup(store, rank, world, timeout_s, ring_bytes, edges(world))
    timeout = timedelta(seconds=timeout_s)
    if backend == "gloo":
        opts = dist.ProcessGroupGloo._Options()
        opts._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]  # listen on `host` only
        opts._timeout = timeout
        return dist.ProcessGroupGloo(store, rank, world, opts)
    torch.cuda.set_device(device)
    opts = dist.ProcessGroupNCCL.Options()
    opts._timeout = timeout
    return dist.ProcessGroupNCCL(store, rank, world, opts)


class Link:
    """One stage's end of the data plane. Keys are training steps (>= 0) or evaluation batches (-1, -2,
    …). Every receive is posted before it is waited on; every send is reaped lazily (its tensor kept alive
    until it completes). With one stage there is no process group: the error only loops back."""

    def __init__(self, rank: int, world: int, *, backend: str = "shm", device: torch.device | str = "cpu",
                 host: str = "127.0.0.1", port: int = 0, rendezvous: Rendezvous | None = None,
                 timeout_s: float = 120.0, error_shape: tuple[int, int] = (0, 0), max_sends: int = 4,
                 ring_bytes: int = 1 << 20):
        self.rank, self.world, self.head = rank, world, world - 1
        self.device = torch.device(device)
        # shm and gloo move host memory (CUDA tensors are staged through it); nccl moves device memory.
        self.wire = self.device if backend == "nccl" else torch.device("cpu")
        self.error_shape, self.max_sends = error_shape, max_sends
        self.inputs: dict[int, tuple] = {}
        self.errors: dict[int, tuple] = {}
        self.sends: deque = deque()
        self.pg = None
        if world > 1:
            store = rendezvous.store if rendezvous else dist.TCPStore(
                host, port, world, is_master=False, timeout=timedelta(seconds=timeout_s))
            self.pg = self._guard(lambda: process_group(backend, dist.PrefixStore("dfa", store), rank, world, host,
                                                        timeout_s, self.device, ring_bytes))

    def _guard(self, fn):
        try:
            return fn()
        except (RuntimeError, OSError) as err:  # connection errors, timeouts (an OSError), DistBackendError
            first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise PeerLost(f"stage {self.rank}: data plane: {first}") from err

    def _recv(self, shape, src: int, tag: int) -> tuple:
        if isinstance(self.pg, ShmGroup):
            arrived = self.pg.take(src, tag)
            if arrived is not None:  # already here: its bytes become the tensor
                buf = torch.frombuffer(arrived, dtype=torch.float32)
                if buf.numel() != math.prod(shape):
                    raise RuntimeError(f"stage {self.rank}: message {tag} from rank {src} has {buf.numel()} "
                                       f"values, expected {math.prod(shape)}")
                return None, buf.view(shape)
        buf = torch.empty(shape, device=self.wire)
        return self._guard(lambda: self.pg.recv([buf], src, tag)), buf

    def _send(self, t: torch.Tensor, dst: int, tag: int) -> None:
        """Start a send and keep it (and its tensor) until it completes; block only when more than
        `max_sends` are outstanding (the schedule keeps the receivers within depth steps, so they do)."""
        t = t.to(self.wire)
        self.sends.append((self._guard(lambda: self.pg.send([t], dst, tag)), t))
        while self.sends and (len(self.sends) > self.max_sends or self.sends[0][0].is_completed()):
            self._guard(self.sends.popleft()[0].wait)

    def flush(self) -> None:
        """Wait until every started send has completed. A stage calls it before returning from a window:
        with shm, bytes that did not fit in the ring move only while this stage calls in, and the next
        stage needs this window's activations within its own window. (The head's error sends may stay
        queued: their receivers need them in the next window, which starts the head too.)"""
        while self.sends:
            self._guard(self.sends.popleft()[0].wait)

    # -- activations ---------------------------------------------------------------------------------
    def post_input(self, key: int, shape: tuple[int, ...]) -> None:
        if key not in self.inputs:
            self.inputs[key] = self._recv(shape, self.rank - 1, _tag(key))

    def input(self, key: int) -> torch.Tensor:
        work, buf = self.inputs.pop(key)
        if work is not None:
            self._guard(work.wait)
        return buf.to(self.device, non_blocking=True)

    def output(self, key: int, t: torch.Tensor) -> None:
        self._send(t, self.rank + 1, _tag(key))

    # -- the error -------------------------------------------------------------------------------------
    def share_error(self, step: int, e: torch.Tensor | None = None) -> None:
        """At forward(step): the head passes e and sends it to every other stage; every other stage posts
        its receive."""
        if e is None:
            self.errors[step] = self._recv(self.error_shape, self.head, ERROR_TAG + _tag(step))
            return
        self.errors[step] = (None, e)
        for dst in range(self.world - 1):
            self._send(e, dst, ERROR_TAG + _tag(step))

    def error(self, step: int) -> torch.Tensor:
        """e_step, once it has arrived (a stage waits for it at update(step))."""
        work, e = self.errors.pop(step)
        if work is not None:
            self._guard(work.wait)
        return e.to(self.device, non_blocking=True)


def _tag(key: int) -> int:
    return key % ERROR_TAG if key >= 0 else EVAL_TAG + (-key - 1)
