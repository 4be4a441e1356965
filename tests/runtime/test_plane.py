"""The data plane's Link between real processes (Ray actors), over each host-memory backend: a three-stage
relay of activations with receives posted ahead, the head's error reaching every stage, a rendezvous that
listens on loopback only, and a dead peer reported as PeerLost."""
import os
import signal
import time

import pytest
import ray
import torch

from dfa_async.runtime import shm
from dfa_async.runtime.plane import Link, PeerLost, Rendezvous, edges

pytestmark = pytest.mark.usefixtures("ray_instance")
BACKENDS = ["gloo"] + (["shm"] if shm.available() else [])


@ray.remote(num_cpus=1)
class Stage:
    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def pid(self) -> int:
        return os.getpid()

    def open(self) -> tuple[str, int]:
        self.rv = Rendezvous("127.0.0.1", self.world, 30)
        return self.rv.sock.getsockname()

    def connect(self, port: int, backend: str, timeout_s: float = 30.0) -> None:
        self.link = Link(self.rank, self.world, backend=backend, port=port, rendezvous=getattr(self, "rv", None),
                         timeout_s=timeout_s, error_shape=(2, 3), ring_bytes=1 << 16)

    def relay(self, steps: int) -> list[float]:
        """Rank 0 emits step t as a tensor of t; the middle adds 100; the head answers with e_t = -t.
        Every non-head rank returns the errors it received, in step order."""
        link, head = self.link, self.rank == self.world - 1
        for t in range(min(3, steps)):
            if self.rank:
                link.post_input(t, (2, 4))
        errors = []
        for t in range(steps):
            x = torch.full((2, 4), float(t)) if self.rank == 0 else link.input(t)
            if self.rank and t + 3 < steps:
                link.post_input(t + 3, (2, 4))
            if head:
                assert torch.equal(x, torch.full((2, 4), t + 100.0 * (self.world - 2)))
                link.share_error(t, torch.full((2, 3), -float(t)))
            else:
                link.share_error(t)
                link.output(t, x + 100 if self.rank else x)
        for t in range(steps):
            errors.append(link.error(t)[0, 0].item())
        link.flush()
        return errors

    def wait_for_input(self) -> None:
        self.link.post_input(0, (2, 4))
        self.link.input(0)


def group(world: int, backend: str, timeout_s: float = 30.0):
    actors = [Stage.remote(r, world) for r in range(world)]
    host, port = ray.get(actors[0].open.remote())
    assert host == "127.0.0.1"  # the rendezvous never listens beyond loopback here
    ray.get([a.connect.remote(port, backend, timeout_s) for a in actors])
    return actors


@pytest.mark.parametrize("backend", BACKENDS)
def test_activations_relay_and_the_error_reaches_every_stage(backend):
    actors = group(3, backend)
    got = ray.get([a.relay.remote(20) for a in actors])
    for errors in got:
        assert errors == [-float(t) for t in range(20)]


def test_the_head_sends_to_every_stage_and_each_stage_to_the_next():
    assert edges(4) == [(0, 1), (1, 2), (2, 3), (3, 0), (3, 1), (3, 2)]
    assert edges(1) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_killed_peer_is_reported_as_peer_lost(backend):
    a, b = group(2, backend)
    waiting = b.wait_for_input.remote()
    time.sleep(0.5)
    t0 = time.monotonic()
    os.kill(ray.get(a.pid.remote()), signal.SIGKILL)
    with pytest.raises(ray.exceptions.RayTaskError) as err:
        ray.get(waiting)
    assert isinstance(err.value.cause, PeerLost) and "stage 1: data plane" in str(err.value.cause)
    assert time.monotonic() - t0 < 30
