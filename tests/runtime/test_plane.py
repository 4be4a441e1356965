"""The data plane's Link between real processes (Ray actors), over each host-memory transport: a pipeline
relay carried out exactly as the wire schedule lists it (activations, the head's error to every stage,
evaluation batches), each rank listening on an address of its own, a rendezvous that listens on loopback
only, a dead peer reported as PeerLost, and a channel that cannot connect named by its pair."""
import os
import signal
import time

import pytest
import ray
import torch

from dfa_async import wire
from dfa_async.runtime import shm
from dfa_async.runtime.plane import Link, PeerLost, Rendezvous, buffer_kind, edges, indexed

pytestmark = pytest.mark.usefixtures("ray_instance")
TRANSPORTS = ["gloo"] + (["shm"] if shm.available() else [])


@ray.remote(num_cpus=1)
class Stage:
    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def pid(self) -> int:
        return os.getpid()

    def open(self, host: str = "127.0.0.1") -> tuple[str, int]:
        self.rv = Rendezvous(host, self.world, 30)
        return self.rv.sock.getsockname()

    def connect(self, port: int, transport: str, timeout_s: float = 30.0, host: str = "127.0.0.1",
                store_host: str = "127.0.0.1") -> dict:
        self.link = Link(self.rank, self.world, transport=transport, port=port, rendezvous=getattr(self, "rv", None),
                         timeout_s=timeout_s, ring_bytes=1 << 16, host=host, store_host=store_host,
                         max_sends=wire.max_sends(self.rank, self.world, 2))
        return {ch: type(pg).__name__ for ch, (pg, _) in self.link.comms.items()}

    def communicators(self) -> list[int]:
        return [id(pg) for pg, _ in self.link.comms.values()]

    def relay(self, steps: int, depth: int = 2) -> list[float]:
        """The wire schedule of one window with stand-in compute: rank 0 emits step t as a tensor of t,
        each later rank adds 100, the head answers e_t = -t. Returns the errors each rank applied."""
        head = self.world - 1
        acts = [(2, 4)] * self.world
        items = wire.window(self.rank, self.world, 0, steps, depth, [steps - 1], acts, (2, 3))
        got, applied = {}, []
        for op, t, ch, msg in items:
            if op == "recv":
                self.link.post(ch, msg)
            elif op == "wait":
                got[msg.kind, t] = self.link.wait(ch, msg)
            elif op == "forward":
                x = torch.full((2, 4), float(t)) if self.rank == 0 else got.pop((wire.ACT, t)) + 100
                if self.rank == head:
                    assert torch.equal(x, torch.full((2, 4), t + 100.0 * head))
                    got[wire.ERR, t] = torch.full((2, 3), -float(t))
                else:
                    got["out", t] = x
            elif op == "send":
                self.link.send(ch, msg, got[wire.ERR, t] if msg.kind == wire.ERR else got.pop(("out", t)))
            elif op == "update":
                applied.append(got.pop((wire.ERR, t))[0, 0].item())
            elif op == "flush":
                self.link.flush()
        return applied

    def ping(self) -> None:
        self.link.run(wire.ping(self.rank, self.world))

    def wait_for_input(self) -> None:
        msg = wire.Msg(wire.ACT, 0, (2, 4))
        self.link.post((0, 1), msg)
        self.link.wait((0, 1), msg)


def group(world: int, transport: str, timeout_s: float = 30.0, hosts=None):
    hosts = hosts or ["127.0.0.1"] * world
    actors = [Stage.remote(r, world) for r in range(world)]
    host, port = ray.get(actors[0].open.remote(hosts[0]))
    assert host == hosts[0]  # the rendezvous listens on stage 0's address only
    ray.get([a.connect.remote(port, transport, timeout_s, h, hosts[0]) for a, h in zip(actors, hosts)])
    return actors


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_window_of_the_wire_schedule_relays_activations_and_every_error(transport):
    actors = group(3, transport)
    for errors in ray.get([a.relay.remote(20) for a in actors]):
        assert errors == [-float(t) for t in range(20)]
    ray.get([a.ping.remote() for a in actors])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_each_stage_holds_its_own_channels_each_a_communicator_of_its_own_on_gloo(transport):
    assert wire.channels(4) == [(0, 1), (1, 2), (2, 3), (3, 0), (3, 1), (3, 2)]
    assert edges(4) == sorted(wire.channels(4)) and edges(1) == []
    actors = [Stage.remote(r, 3) for r in range(3)]
    _, port = ray.get(actors[0].open.remote())
    comms = ray.get([a.connect.remote(port, transport) for a in actors])
    assert [sorted(c) for c in comms] == [[(0, 1), (2, 0)], [(0, 1), (1, 2), (2, 1)], [(1, 2), (2, 0), (2, 1)]]
    ids = ray.get([a.communicators.remote() for a in actors])
    for mine in ids:  # gloo: a 2-rank group per channel; shm: one group, a ring per channel
        assert len(set(mine)) == (len(mine) if transport == "gloo" else 1)


def test_every_rank_listens_on_its_own_address():
    """Three "nodes" on distinct loopback addresses: each rank's gloo device binds its own, which only
    a plane that gives every rank its own host can do (any process may bind any loopback address, so
    this shows the addresses are used as given; tests/runtime/test_hosts.py has truly separate hosts)."""
    hosts = ["127.0.0.4", "127.0.0.5", "127.0.0.6"]
    actors = group(3, "gloo", hosts=hosts)
    for errors in ray.get([a.relay.remote(8) for a in actors]):
        assert errors == [-float(t) for t in range(8)]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_killed_peer_is_reported_as_peer_lost(transport):
    a, b = group(2, transport)
    waiting = b.wait_for_input.remote()
    time.sleep(0.5)
    t0 = time.monotonic()
    os.kill(ray.get(a.pid.remote()), signal.SIGKILL)
    with pytest.raises(ray.exceptions.RayTaskError) as err:
        ray.get(waiting)
    assert isinstance(err.value.cause, PeerLost) and "stage 1: data plane" in str(err.value.cause)
    assert time.monotonic() - t0 < 30


def test_a_channel_whose_peer_never_comes_is_named_by_its_pair():
    """Stage 1 of 2 joins, stage 0 opens the rendezvous but never connects: stage 1's first channel
    (0 -> 1) cannot connect within the timeout, and the error names it."""
    a, b = Stage.remote(0, 2), Stage.remote(1, 2)
    _, port = ray.get(a.open.remote())
    with pytest.raises(ray.exceptions.RayTaskError) as err:
        ray.get(b.connect.remote(port, "gloo", 3.0))
    assert isinstance(err.value.cause, PeerLost)
    assert "stage 1: data plane: stage 0 -> stage 1 (act): cannot connect" in str(err.value.cause)


def test_cuda_stages_use_their_own_indexed_device_and_no_pageable_staging(monkeypatch):
    """What can be checked without a GPU: the device a CUDA stage binds carries its index (the actor's
    one visible GPU is the current device), and where each transport keeps a CUDA stage's tensors."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert indexed("cuda") == torch.device("cuda", 0)
    assert indexed(torch.device("cuda", 3)) == torch.device("cuda", 3)
    assert indexed("cpu") == torch.device("cpu")
    cuda = torch.device("cuda", 0)
    assert buffer_kind(cuda, "nccl") == "device"
    assert buffer_kind(cuda, "shm") == buffer_kind(cuda, "gloo") == "pinned"
    assert buffer_kind(torch.device("cpu"), "shm") == "host"
