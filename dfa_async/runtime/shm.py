"""A point-to-point process group for stages on one node: a shared-memory byte ring per direction,
written and read by the stages' own threads. No I/O thread, no system call per message.

Why not gloo between stages on one node: gloo moves data on an I/O thread of its own that must share the
stage's one core with the compute thread; measured on this 2-core machine (two processes, a 16-wide
stage), posting a receive or a send then costs 120-250 us, more than the step it serves. Sockets driven by
the stage's thread cost ~2 us per small message, but a message larger than the kernel's socket buffer only
moves on while its sender calls in (one op later). Here a send is a copy into the ring, done at once
whenever the ring has room.

This group has the interface of a torch.distributed backend's point-to-point calls (`send`/`recv` of a
tensor list with a tag, returning a work with `wait`/`is_completed`), so the data plane uses it, gloo or
nccl alike. Each message is a header (tag, size) and the tensor's bytes; one that arrives before its
receive is posted is kept until it is. Ordering: the writer copies the bytes, then publishes the new write
position; the reader loads the position, then the bytes. x86-64 keeps stores in order and loads in order
(TSO), which is all a single-producer single-consumer ring needs; elsewhere the data plane uses gloo.

Waiting: a stage with a core of its own polls briefly (yielding the core), then sleeps; with more stages
than cores it sleeps at once, since polling would take the core from the stage it waits for. A sleeping
stage marks the rings it waits on and blocks on its wake-up socket; a peer that writes to (or frees room
in) a marked ring sends it a datagram. Marking and re-checking are separated by a full memory fence on
both sides (a lock's atomic instruction), so no wake-up is lost; a 10 ms timeout backs that up."""
from __future__ import annotations

import mmap
import os
import platform
import secrets
import select
import socket
import struct
import threading
import time
from collections import deque

import numpy as np
import torch

HEADER = struct.Struct("<qq")  # tag, payload bytes
META = 64                      # ring header: write position, read position, reader asleep, writer asleep
SPIN_S = 0.002                 # a stage with a core of its own polls this long (yielding) before it sleeps
NAP_S = 0.01                   # longest sleep before a waiting stage looks again by itself
CHECK_PEER_S = 0.5             # while waiting, how often it checks that its peers are alive
_FENCE = threading.Lock()


def fence() -> None:
    """A full memory barrier: acquiring a lock is an atomic (locked) instruction on x86-64."""
    _FENCE.acquire()
    _FENCE.release()


def available() -> bool:
    return platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64") and os.path.isdir("/dev/shm")


class Ring:
    """A byte stream from one process to another in a shared-memory file; positions only grow."""

    def __init__(self, path: str, capacity: int = 0, create: bool = False):
        if create:  # reserve the memory now: a full /dev/shm must fail here, not as a SIGBUS mid-run
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.posix_fallocate(fd, 0, META + capacity)
            except OSError as err:
                os.close(fd)
                os.unlink(path)
                raise RuntimeError(f"runtime.transport: shm: /dev/shm cannot hold a {capacity >> 20} MiB ring "
                                   f"({err.strerror}); free it or set runtime.transport = gloo") from None
            os.close(fd)
        with open(path, "r+b") as fh:
            capacity = os.fstat(fh.fileno()).st_size - META
            # Map every page now: a first touch mid-run costs a page fault per 4 kB of each message.
            self.mm = mmap.mmap(fh.fileno(), META + capacity, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        self.pos = np.frombuffer(self.mm, dtype=np.int64, count=4)  # write, read, reader/writer asleep
        self.data = memoryview(self.mm)[META:]
        self.capacity = capacity

    def write(self, views: list[memoryview]) -> int:
        """Copy as much of `views` as fits; publish; return the bytes written."""
        w = int(self.pos[0])
        free = self.capacity - (w - int(self.pos[1]))
        done = 0
        for v in views:
            n = min(len(v), free - done)
            if n <= 0:
                break
            self._copy_in(w + done, v[:n])
            done += n
        if done:
            self.pos[0] = w + done
        return done

    def read_into(self, view: memoryview) -> int:
        r = int(self.pos[1])
        n = min(len(view), int(self.pos[0]) - r)
        if n > 0:
            a = r % self.capacity
            first = min(n, self.capacity - a)
            view[:first] = self.data[a:a + first]
            view[first:n] = self.data[:n - first]
            self.pos[1] = r + n
        return max(n, 0)

    def _copy_in(self, at: int, v: memoryview) -> None:
        a = at % self.capacity
        first = min(len(v), self.capacity - a)
        self.data[a:a + first] = v[:first]
        self.data[:len(v) - first] = v[first:]


class Work:
    __slots__ = ("group", "done", "peer")

    def __init__(self, group: "ShmGroup", peer: int):
        self.group, self.done, self.peer = group, False, peer

    def wait(self, timeout: float | None = None) -> bool:
        self.group._wait_for(self, timeout)
        return True

    def is_completed(self) -> bool:
        if not self.done:
            self.group._progress()
        return self.done


def _bytes(t: torch.Tensor) -> memoryview:
    # as bytes (numpy has no bfloat16)
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


class _Peer:
    """The two rings shared with one peer: outgoing messages in order, the incoming message being read."""

    def __init__(self, rank: int, pid: int, out: Ring | None, inc: Ring | None, wake: bytes,
                 pinger: socket.socket):
        self.rank, self.pid, self.out_ring, self.in_ring = rank, pid, out, inc
        self.wake, self.pinger = wake, pinger
        self.out: deque = deque()            # [header + payload views, Work], written in order
        self.posted: dict[int, tuple] = {}   # tag -> (view, Work) of posted receives
        self.early: dict[int, memoryview] = {}  # tag -> payload that arrived before its receive
        self.header, self.got = bytearray(HEADER.size), 0
        self.body = None                     # [tag, view, Work | None, bytes read] of the payload being read

    def ping(self) -> None:
        try:
            self.pinger.sendto(b"!", self.wake)
        except (BlockingIOError, ConnectionRefusedError, FileNotFoundError):
            pass  # its queue is full (it will wake anyway) or it is gone (noticed elsewhere)

    def flush(self) -> bool:
        if not self.out:
            return False
        moved = self._flush()
        if moved:  # the reader may have gone to sleep on this ring: publish, fence, then look
            fence()
            if self.out_ring.pos[2]:
                self.ping()
        return moved

    def drain(self) -> bool:
        if self.in_ring is None:
            return False
        moved = self._drain()
        if moved:  # a writer waiting for room may be asleep
            fence()
            if self.in_ring.pos[3]:
                self.ping()
        return moved

    def _flush(self) -> bool:
        moved = False
        while self.out:
            views, work = self.out[0]
            n = self.out_ring.write(views)
            moved |= n > 0
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if views:
                views[0] = views[0][n:]
                return moved
            self.out.popleft()
            work.done = True
        return moved

    def _drain(self) -> bool:
        moved = False
        while True:
            if self.body is None:
                n = self.in_ring.read_into(memoryview(self.header)[self.got:])
                if n == 0:
                    return moved
                moved, self.got = True, self.got + n
                if self.got < HEADER.size:
                    return moved
                self.got = 0
                tag, size = HEADER.unpack(self.header)
                view, work = self.posted.pop(tag, (None, None))
                if view is None:
                    view = memoryview(bytearray(size))
                elif len(view) != size:
                    raise RuntimeError(f"message {tag} from rank {self.rank} has {size} bytes, the receive "
                                       f"expects {len(view)}")
                self.body = [tag, view, work, 0]
            tag, view, work, got = self.body
            if got < len(view):
                n = self.in_ring.read_into(view[got:])
                moved |= n > 0
                self.body[3] = got = got + n
            if got < len(view):
                return moved
            self.body = None
            if work is None:
                self.early[tag] = view
            else:
                work.done = True

    def claim_early(self) -> None:
        for tag in [t for t in self.early if t in self.posted]:
            view, work = self.posted.pop(tag)
            data = self.early.pop(tag)
            if len(data) != len(view):
                raise RuntimeError(f"message {tag} from rank {self.rank} has {len(data)} bytes, the receive "
                                   f"expects {len(view)}")
            view[:] = data
            work.done = True


class ShmGroup:
    """Ranks 0..world-1 of one node, a ring for each direction in `edges` ((src, dst) pairs; all pairs
    when None). `store` (a torch.distributed Store) carries the rings' names; each rank creates the rings
    it reads and removes their names once every rank has mapped them, so nothing is left in /dev/shm,
    even after a kill."""

    def __init__(self, store, rank: int, world: int, timeout_s: float, capacity: int,
                 edges: list[tuple[int, int]] | None = None):
        self.rank, self.world, self.timeout_s = rank, world, timeout_s
        if edges is None:
            edges = [(a, b) for a in range(world) for b in range(world) if a != b]
        # Poll only with a core to spare; otherwise the stage it waits for may need this one.
        self.spin_s = SPIN_S if world <= len(os.sched_getaffinity(0)) else 0.0
        token = secrets.token_hex(6)
        self.wake = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.wake.bind(f"\0dfa-{token}-wake")
        self.wake.setblocking(False)
        self.pinger = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.pinger.setblocking(False)
        mine = {src: Ring(f"/dev/shm/dfa-{token}-{src}-{rank}", capacity, create=True)
                for src, dst in edges if dst == rank}
        store.set(f"shm/{rank}", f"{token}:{os.getpid()}")
        self.peers: dict[int, _Peer] = {}
        try:
            for peer in sorted({b for a, b in edges if a == rank} | set(mine)):
                peer_token, pid = store.get(f"shm/{peer}").decode().split(":")
                out = Ring(f"/dev/shm/dfa-{peer_token}-{rank}-{peer}") if (rank, peer) in edges else None
                self.peers[peer] = _Peer(peer, int(pid), out, mine.get(peer), f"\0dfa-{peer_token}-wake".encode(),
                                         self.pinger)
            store.add("shm/mapped", 1)
            deadline = time.monotonic() + timeout_s
            while int(store.add("shm/mapped", 0)) < world:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the other stages did not map their rings within {timeout_s:g} s")
                time.sleep(0.001)
        finally:
            for src in mine:
                try:
                    os.unlink(f"/dev/shm/dfa-{token}-{src}-{rank}")
                except FileNotFoundError:
                    pass
        self.last_check = time.monotonic()

    # -- the backend interface ----------------------------------------------------------------------
    def send(self, tensors: list[torch.Tensor], dst: int, tag: int) -> Work:
        (t,) = tensors
        peer, work = self.peers[dst], Work(self, dst)
        payload = _bytes(t.contiguous())
        peer.out.append(([memoryview(HEADER.pack(tag, len(payload))), payload], work))
        peer.flush()
        return work

    def take(self, src: int, tag: int) -> bytearray | None:
        """The payload of message `tag` from `src` if it has arrived whole before its receive was
        posted (the caller uses it as its buffer: no second copy); None otherwise."""
        view = self.peers[src].early.pop(tag, None)
        return None if view is None else view.obj

    def recv(self, tensors: list[torch.Tensor], src: int, tag: int) -> Work:
        (t,) = tensors
        peer, work = self.peers[src], Work(self, src)
        peer.posted[tag] = (_bytes(t), work)
        peer.claim_early()  # (a message of this tag still arriving is claimed when it is complete)
        return work

    # -- progress -------------------------------------------------------------------------------------
    def _progress(self) -> bool:
        moved = False
        for peer in self.peers.values():
            moved |= peer.flush()
        for peer in self.peers.values():
            moved |= peer.drain()
            peer.claim_early()
        return moved

    def _wait_for(self, work: Work, timeout: float | None) -> None:
        """Poll (yielding the core) for up to spin_s, then sleep until a peer writes to or frees room in a
        ring this stage waits on; check now and then that the peers are alive (a killed peer never
        writes again)."""
        limit = self.timeout_s if timeout is None else timeout
        start = time.perf_counter()
        while not work.done:
            if self._progress():
                continue
            waited = time.perf_counter() - start
            if waited < self.spin_s:
                os.sched_yield()
                continue
            if waited > limit:
                raise TimeoutError(f"waited {limit:g} s for rank {work.peer}")
            self._sleep(min(NAP_S, limit - waited + 1e-3))
            self._check_peers()

    def _sleep(self, timeout: float) -> None:
        peers = list(self.peers.values())
        for p in peers:  # mark: data expected on every incoming ring; room wanted where output waits
            if p.in_ring is not None:
                p.in_ring.pos[2] = 1
            if p.out:
                p.out_ring.pos[3] = 1
        fence()
        try:
            if not self._progress():  # re-check after marking: a write just before it is not missed
                select.select([self.wake], [], [], timeout)
        finally:
            for p in peers:
                if p.in_ring is not None:
                    p.in_ring.pos[2] = 0
                if p.out_ring is not None:
                    p.out_ring.pos[3] = 0
            try:
                while self.wake.recv(64):
                    pass
            except BlockingIOError:
                pass

    def _check_peers(self) -> None:
        now = time.monotonic()
        if now - self.last_check < CHECK_PEER_S:
            return
        self.last_check = now
        for peer in self.peers.values():
            try:
                os.kill(peer.pid, 0)
            except ProcessLookupError:
                raise ConnectionError(f"rank {peer.rank} (pid {peer.pid}) is gone") from None
            except PermissionError:
                pass
