"""The data plane: every tensor between stages, point-to-point and asynchronous, on the channels of the
wire schedule (`dfa_async/wire.py`): stage k -> k + 1 (activations, evaluation batches) and head -> k
(errors), each one direction of one edge and its own communicator. A stage carries out its wire items
in order: a receive is posted well before its tensor is waited on, a send is reaped lazily.

Transports: `shm` (stages on one node: a shared-memory ring per channel, see shm.py), `gloo` (host
memory over TCP; each channel a 2-rank process group, each rank listening on its own node's address)
and `nccl` (CUDA tensors; each channel a 2-rank communicator, so no two channels share nccl's in-order
stream). CUDA stages on a host transport (GPU-sharing stages) stage every tensor through pinned host
memory with asynchronous copies, never pageable memory. Why point-to-point on the backend objects
rather than `dist.broadcast` or the `dist.isend` wrappers: measured between two processes on a 2-core
machine, an asynchronous gloo broadcast of an 8x10 tensor costs ~250 us per step, an isend/irecv pair
through the wrappers ~85 us of CPU, the same pair on the `ProcessGroupGloo` object ~35 us. Nothing here
knows about Ray or about a model."""
from __future__ import annotations

import math
import socket
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import timedelta

import torch
import torch.distributed as dist

from .. import wire
from .shm import ShmGroup

RENDEZVOUS, CONNECT, TRANSFER = 0, 1, 2  # the phases of a stage's data plane, in order
# Tag spaces within a channel (gloo and shm match by tag; nccl by order, which the wire schedule fixes).
TAGS = {wire.ACT: 0, wire.ERR: 1 << 28, wire.EVAL: 2 << 28, wire.HELLO: 3 << 28, wire.PING: (3 << 28) + (1 << 27)}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "int64": torch.int64}


class PeerLost(RuntimeError):
    """A transfer failed or timed out: a peer stage died or can no longer be reached. `channel`: the
    channel it happened on, where known; `phase`: RENDEZVOUS, CONNECT or TRANSFER. Which failure caused
    the others follows from these (pipeline.root_cause)."""

    def __init__(self, message: str, channel: tuple[int, int] | None = None, phase: int = 2):
        super().__init__(message, channel, phase)  # all in args: Ray pickles the exception to the driver
        self.channel, self.phase = channel, phase

    def __str__(self) -> str:
        return self.args[0]


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
    """Who sends to whom: the wire schedule's channels, sorted."""
    return sorted(wire.channels(world))


def process_group(transport: str, store, rank: int, world: int, host: str, timeout_s: float, device: torch.device,
                  ring_bytes: int = 1 << 20, pairs: list[tuple[int, int]] | None = None):
    """The backend object of a process group (not the global default group: a stage holds its own).
    `host`: the address this rank listens on (gloo), its own node's. `pairs`: the directions shm needs
    rings for (default: every channel of a pipeline of `world` stages)."""
    if transport == "shm":
        return ShmGroup(store, rank, world, timeout_s, ring_bytes, pairs if pairs is not None else edges(world))
    timeout = timedelta(seconds=timeout_s)
    if transport == "gloo":
        opts = dist.ProcessGroupGloo._Options()
        opts._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]  # listen on `host` only
        opts._timeout = timeout
        return dist.ProcessGroupGloo(store, rank, world, opts)
    torch.cuda.set_device(indexed(device))
    opts = dist.ProcessGroupNCCL.Options()
    opts._timeout = timeout
    return dist.ProcessGroupNCCL(store, rank, world, opts)


def indexed(device: torch.device | str) -> torch.device:
    """A CUDA device with its index. In a Ray actor given one GPU, CUDA_VISIBLE_DEVICES holds that GPU
    alone, so the actor's own GPU is the current device (index 0); torch.cuda.set_device refuses a bare
    `cuda` (torch 2.13: "Expected a torch.device with a specified index")."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def buffer_kind(device: torch.device, transport: str) -> str:
    """Where a stage's tensors wait for the wire: on the device (nccl moves device memory), in pinned
    host memory (a CUDA stage on a host transport: copies are asynchronous, no pageable staging), or in
    plain host memory (a CPU stage)."""
    if transport == "nccl":
        return "device"
    return "pinned" if device.type == "cuda" else "host"


def to_wire(t: torch.Tensor, buffers: str) -> torch.Tensor:
    """The tensor a send hands to the transport. `pinned` (a CUDA stage on a host transport): the bytes
    go into the ring from the host, so the tensor is copied into pinned memory asynchronously and the
    host waits for that copy alone (a pageable `.cpu()` would sync the device and copy twice); `host`:
    as it is on the CPU; `device`: as it is (nccl reads device memory)."""
    if buffers == "pinned":
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        done.synchronize()
        return host
    return t.detach().cpu() if buffers == "host" else t


class Link:
    """One stage's end of the data plane: its channels (those it sends or receives on), opened in the
    wire schedule's global order and checked with its hello. `post`/`wait` a receive, `send`, `flush`,
    each naming the channel and the message (`wire.Msg`); a received tensor arrives on the stage's
    device. With one stage there is no channel: the error only loops back."""

    def __init__(self, rank: int, world: int, *, transport: str = "shm", device: torch.device | str = "cpu",
                 host: str = "127.0.0.1", store_host: str = "127.0.0.1", port: int = 0,
                 rendezvous: Rendezvous | None = None, timeout_s: float = 120.0, max_sends: int = 4,
                 ring_bytes: int = 1 << 20):
        self.rank, self.world, self.transport = rank, world, transport
        self.device = indexed(device) if transport == "nccl" else torch.device(device)
        self.buffers = buffer_kind(self.device, transport)
        self.wire = self.device if self.buffers == "device" else torch.device("cpu")
        self.max_sends = max_sends
        self.posted: dict[tuple, tuple] = {}
        self.sends: deque = deque()
        self.comms: dict[tuple[int, int], tuple] = {}  # channel -> (backend object, the peer's rank in it)
        if transport == "nccl":  # the current device is per thread: the stage's own thread issues every op
            torch.cuda.set_device(self.device)
        if world > 1:
            connect = lambda: dist.TCPStore(store_host, port, world, is_master=False,  # noqa: E731
                                            timeout=timedelta(seconds=timeout_s))
            self._open(connect, rendezvous, host, timeout_s, ring_bytes)
            self.run(wire.hello(rank, world))

    def _open(self, connect, rendezvous, host: str, timeout_s: float, ring_bytes: int) -> None:
        """Open this stage's channels. gloo and nccl: a 2-rank group per channel, all at once (each on a
        store connection of its own), so a channel that cannot connect fails within one timeout and
        delays no other; the hello then uses them in the global order."""
        mine = [ch for ch in wire.channels(self.world) if self.rank in ch]
        rendezvous_error = f"{_pair((self.rank, 0), 'rendezvous')}: cannot connect to stage 0's node"

        def store():
            return dist.PrefixStore("dfa", rendezvous.store if rendezvous and self.transport == "shm"
                                    else self._guard(connect, rendezvous_error, phase=RENDEZVOUS))

        if self.transport == "shm":  # one group, a ring per channel
            group = self._guard(lambda: process_group("shm", store(), self.rank, self.world, host, timeout_s,
                                                      self.device, ring_bytes), "cannot map the shared-memory rings",
                                phase=CONNECT)
            self.comms = {ch: (group, ch[1] if ch[0] == self.rank else ch[0]) for ch in mine}
            return

        def one(ch):
            me = ch.index(self.rank)
            return ch, (self._guard(lambda: process_group(self.transport, dist.PrefixStore(f"{ch[0]}-{ch[1]}", store()),
                                                          me, 2, host, timeout_s, self.device),
                                    _pair(ch, _carries(ch)) + ": cannot connect", ch, CONNECT), 1 - me)

        # gloo's own connect retries an unreachable peer well past its timeout (~50 s measured for 10 s):
        # the stage gives up at its own deadline, leaving the stuck thread to end with the process.
        pool = ThreadPoolExecutor(len(mine))
        futures = {pool.submit(one, ch): ch for ch in mine}
        done, late = wait(futures, timeout=timeout_s + 1.0)
        pool.shutdown(wait=False)
        lost = [f.exception() for f in done if f.exception() is not None]
        lost += [PeerLost(f"stage {self.rank}: data plane: {_pair(ch, _carries(ch))}: cannot connect within "
                          f"{timeout_s:g} s", ch, CONNECT) for ch in (futures[f] for f in late)]
        if lost:  # the rendezvous first, then the earliest channel in the global order
            order = wire.channels(self.world)
            raise min(lost, key=lambda e: (getattr(e, "phase", TRANSFER),
                                           order.index(e.channel) if getattr(e, "channel", None) in order else -1))
        self.comms = dict(f.result() for f in futures)

    def _guard(self, fn, what: str = "", channel: tuple[int, int] | None = None, phase: int = TRANSFER):
        try:
            return fn()
        except PeerLost:
            raise
        except (RuntimeError, OSError) as err:  # connection errors, timeouts (an OSError), DistBackendError
            first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise PeerLost(f"stage {self.rank}: data plane: {what + ': ' if what else ''}{first}", channel,
                           phase) from err

    # -- the wire items ------------------------------------------------------------------------------------
    def run(self, items: list[wire.Item]) -> None:
        """Carry out items that move tensors only (the hello, the ping): each sends a one-element tensor
        holding its key, and each receive checks it."""
        for item in items:
            if item.op == "send":
                self.send(item.channel, item.msg, torch.full(item.msg.shape, float(item.key), device=self.device))
            elif item.op == "recv":
                self.post(item.channel, item.msg)
            elif item.op == "wait":
                got = float(self.wait(item.channel, item.msg).flatten()[0])
                if got != item.key:
                    raise PeerLost(f"stage {self.rank}: data plane: {_pair(item.channel, item.msg.kind)} carried "
                                   f"{got:g}, expected {item.key}", item.channel)
            elif item.op == "flush":
                self.flush()

    def post(self, ch: tuple[int, int], msg: wire.Msg) -> None:
        key = (ch, msg.kind, msg.key)
        if key in self.posted:
            return
        pg, peer = self.comms[ch]
        tag = _tag(msg)
        dtype = DTYPES[msg.dtype]
        if isinstance(pg, ShmGroup) and self.buffers == "host":
            arrived = pg.take(peer, tag)
            if arrived is not None:  # already here: its bytes become the tensor
                buf = torch.frombuffer(arrived, dtype=dtype)
                if buf.numel() != math.prod(msg.shape):
                    raise PeerLost(f"stage {self.rank}: data plane: {_pair(ch, msg.kind)} message {msg.key} has "
                                   f"{buf.numel()} values, expected {math.prod(msg.shape)}")
                self.posted[key] = (None, buf.view(msg.shape))
                return
        # Pinned host memory for a CUDA stage: its copy to the device is asynchronous (PyTorch's caching
        # host allocator keeps the block until that copy is done).
        buf = torch.empty(msg.shape, dtype=dtype, device=self.wire, pin_memory=self.buffers == "pinned")
        self.posted[key] = (self._guard(lambda: pg.recv([buf], peer, tag), _pair(ch, msg.kind), ch), buf)

    def wait(self, ch: tuple[int, int], msg: wire.Msg) -> torch.Tensor:
        work, buf = self.posted.pop((ch, msg.kind, msg.key))
        if work is not None:
            self._guard(work.wait, _pair(ch, msg.kind), ch)
        return buf.to(self.device, non_blocking=True)

    def send(self, ch: tuple[int, int], msg: wire.Msg, t: torch.Tensor) -> None:
        """Start a send and keep it (and its tensor) until it completes; block only when more than
        `max_sends` are outstanding (the schedule keeps the receivers within depth steps, so they do)."""
        if tuple(t.shape) != msg.shape or t.dtype != DTYPES[msg.dtype]:
            raise RuntimeError(f"stage {self.rank}: {_pair(ch, msg.kind)} {msg.key}: the wire schedule says "
                               f"{msg.shape} {msg.dtype}, the stage sends {tuple(t.shape)} {t.dtype}")
        t = to_wire(t, self.buffers)
        pg, peer = self.comms[ch]
        self.sends.append((self._guard(lambda: pg.send([t.contiguous()], peer, _tag(msg)), _pair(ch, msg.kind), ch),
                           t, ch, msg.kind))
        while self.sends and (len(self.sends) > self.max_sends or self.sends[0][0].is_completed()):
            self._reap(*self.sends.popleft())

    def _reap(self, work, t, ch, kind) -> None:
        self._guard(work.wait, _pair(ch, kind), ch)
        if self.buffers == "device":
            # nccl's wait only orders the current stream after the send; back-pressure must hold the host.
            torch.cuda.current_stream(self.device).synchronize()

    def flush(self) -> None:
        """Wait until every started send has completed. A stage calls it before returning from a window:
        with shm, bytes that did not fit in the ring move only while this stage calls in, and the next
        stage needs this window's activations within its own window. (The head's error sends may stay
        queued: their receivers need them in the next window, which starts the head too.)"""
        while self.sends:
            self._reap(*self.sends.popleft())


def _pair(ch: tuple[int, int], kind: str) -> str:
    return f"stage {ch[0]} -> stage {ch[1]} ({kind})"


def _carries(ch: tuple[int, int]) -> str:
    return wire.ACT if ch[1] == ch[0] + 1 else wire.ERR


def _tag(msg: wire.Msg) -> int:
    return TAGS[msg.kind] + msg.key % (1 << 27)
