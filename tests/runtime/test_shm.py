"""The shared-memory process group between two real processes (Ray actors): delivery by tag, streaming
through a ring smaller than a message, messages that arrive before their receive, a dead peer, the
timeout, and nothing left behind in /dev/shm."""
import glob
import os
import signal
import time

import pytest
import ray
import torch
import torch.distributed as dist

from dfa_async.runtime import shm
from dfa_async.runtime.plane import Rendezvous

pytestmark = [pytest.mark.usefixtures("ray_instance"),
              pytest.mark.skipif(not shm.available(), reason="shared-memory rings need x86-64 Linux")]


@ray.remote(num_cpus=1)
class Peer:
    def __init__(self, rank: int):
        self.rank = rank

    def pid(self) -> int:
        return os.getpid()

    def open(self) -> int:
        self.rv = Rendezvous("127.0.0.1", 2, 30)
        return self.rv.port

    def join(self, port: int, capacity: int, timeout_s: float = 30.0) -> None:
        store = self.rv.store if self.rank == 0 else dist.TCPStore("127.0.0.1", port, 2, is_master=False)
        self.g = shm.ShmGroup(dist.PrefixStore("t", store), self.rank, 2, timeout_s, capacity)

    def send(self, tags: list[int], n: int) -> None:
        works = [self.g.send([torch.arange(n, dtype=torch.float32) + tag], 1 - self.rank, tag) for tag in tags]
        for w in works:
            w.wait()

    def recv(self, tags: list[int], n: int) -> list[float]:
        """Post every receive (in the order given), then wait for each; the first value of each."""
        bufs = [torch.empty(n) for _ in tags]
        works = [self.g.recv([b], 1 - self.rank, tag) for b, tag in zip(bufs, tags)]
        for w, b, tag in zip(works, bufs, tags):
            w.wait()
            assert torch.equal(b, torch.arange(n, dtype=torch.float32) + tag)
        return [b[0].item() for b in bufs]

    def recv_after(self, seconds: float, tag: int, n: int) -> float:
        time.sleep(seconds)  # the message arrives before its receive is posted
        return self.recv([tag], n)[0]


def pair(capacity: int, timeout_s: float = 30.0):
    a, b = Peer.remote(0), Peer.remote(1)
    port = ray.get(a.open.remote())
    ray.get([a.join.remote(port, capacity, timeout_s), b.join.remote(port, capacity, timeout_s)])
    return a, b


def test_messages_arrive_by_tag_whole_even_through_a_small_ring():
    a, b = pair(capacity=4096)
    n = 50_000  # 200 kB per message through a 4 kB ring: streamed while both sides work
    got = b.recv.remote([7, 3, 5], n)  # posted in another order than sent
    ray.get(a.send.remote([3, 5, 7], n))
    assert ray.get(got) == [7.0, 3.0, 5.0]
    assert not glob.glob("/dev/shm/dfa-*"), "rings must not outlive the set-up in /dev/shm"


def test_a_message_that_arrives_before_its_receive_is_kept():
    a, b = pair(capacity=1 << 20)
    late = b.recv_after.remote(0.5, 11, 1000)
    ray.get(a.send.remote([11], 1000))
    assert ray.get(late) == 11.0


def test_a_size_mismatch_is_an_error_naming_the_message():
    a, b = pair(capacity=1 << 16)
    got = b.recv.remote([4], 10)
    a.send.remote([4], 12)
    with pytest.raises(ray.exceptions.RayTaskError, match="message 4 from rank 0 has 48 bytes"):
        ray.get(got)


def test_a_killed_peer_ends_the_wait_at_once():
    a, b = pair(capacity=1 << 16)
    waiting = b.recv.remote([1], 10)
    time.sleep(0.5)
    t0 = time.monotonic()
    os.kill(ray.get(a.pid.remote()), signal.SIGKILL)
    with pytest.raises(ray.exceptions.RayTaskError, match=r"rank 0 \(pid \d+\) is gone"):
        ray.get(waiting)
    assert time.monotonic() - t0 < 30


def test_waiting_longer_than_the_timeout_is_an_error():
    a, b = pair(capacity=1 << 16, timeout_s=1.0)
    with pytest.raises(ray.exceptions.RayTaskError, match="waited 1 s for rank 0"):
        ray.get(b.recv.remote([1], 10))
