"""The wire schedule: every transfer each stage issues in one call (a window of the schedule, an
evaluation, the connect-time hello, the doctor's ping), in issue order, on which channel, carrying what.
A pure function of the call, like `schedule.ops`; every transport (shm, gloo, nccl) carries out exactly
this list, so tests on CPUs exercise the order nccl runs.

Channels. A channel is one direction of one edge, `(src, dst)`: stage k -> k + 1 carries activations
(and evaluation batches), head -> k carries errors. Each channel is its own communicator (a 2-rank
process group; a ring of its own on shm). Why: nccl runs all point-to-point ops between a pair of ranks
on one communicator and stream, in issue order, tags ignored. With one communicator per pair, the head
posts the receives of its next inputs before it sends e_t while the stage before it posts the receive of
e_t before it sends its next output: on one in-order stream each waits for the other (`check` finds it;
tests/test_wire.py keeps that case). Split by direction, each channel has one sender and one receiver,
both issuing in step order, so the n-th send meets the n-th receive.

`check` is the model of that semantics: on a channel, an op completes only together with the peer's op
at the same position, which must be the matching receive (same kind, key, shape and dtype). A stage's host
goes on past a send or a posted receive and stops at a wait (a receive's tensor is used; too many sends
outstanding; the end of a call that flushes). Blocking at every wait is also what nccl amounts to: each
op's stream waits for the compute issued before it, which waited for every receive waited on before."""
from __future__ import annotations

from collections import deque
from typing import NamedTuple

from . import schedule

ACT, ERR, EVAL, HELLO, PING = "act", "err", "eval", "hello", "ping"


class Msg(NamedTuple):
    kind: str                # act | err | eval | hello | ping
    key: int                 # the step (act, err), the evaluation batch, or the ping's cycle
    shape: tuple[int, ...]
    dtype: str = "float32"


class Item(NamedTuple):
    """One thing a stage does, in order: `recv` posts a receive, `wait` waits for it (its tensor is used
    next), `send` starts a send, `flush` waits for every send started; `forward`, `update` and
    `evaluate` are the stage's compute (the key says which step or batch)."""
    op: str
    key: int
    channel: tuple[int, int] | None = None
    msg: Msg | None = None


def channels(world: int) -> list[tuple[int, int]]:
    """Every channel, in the global order in which stages open them: activations k -> k + 1, then errors
    head -> k."""
    head = world - 1
    return [(k, k + 1) for k in range(head)] + [(head, k) for k in range(head)]


def max_sends(rank: int, world: int, depth: int) -> int:
    """Sends a stage keeps outstanding before it waits for the oldest (its back-pressure): the schedule
    keeps every receiver within depth + 1 steps, so these never stop a stage in steady state."""
    return (depth + 2) * (world - 1 if rank == world - 1 else 1)


def window(rank: int, world: int, start: int, stop: int, depth: int, marks, act_shapes: list[tuple[int, ...]],
           error_shape: tuple[int, ...], dtype: str = "float32", error_dtype: str = "float32") -> list[Item]:
    """Stage `rank`'s items for window [start, stop) of the schedule (`schedule.ops` with `marks`).
    `act_shapes[k]` is the shape of what stage k sends on (batch first); `error_shape`, of e; `dtype` and
    `error_dtype`, what they carry (activations may be narrower than e: train.dtype).

    Receives of inputs are posted depth + 1 steps ahead, and a non-head stage posts the receive of e_t at
    forward(t), so both have long arrived when they are waited on; a non-head stage flushes at the end,
    since its successor needs this window's activations within this window."""
    head, first = world - 1, rank == 0
    ahead = depth + 1
    up = (rank - 1, rank)

    def act(t):
        return Msg(ACT, t, act_shapes[rank - 1], dtype)

    def err(t):
        return Msg(ERR, t, error_shape, error_dtype)

    items = []
    if not first:
        items += [Item("recv", t, up, act(t)) for t in range(start, min(start + ahead, stop))]
    for kind, t in schedule.ops(start, stop, depth, marks):
        if kind == "forward":
            if not first:
                items.append(Item("wait", t, up, act(t)))
                if t + ahead < stop:
                    items.append(Item("recv", t + ahead, up, act(t + ahead)))
            if rank == head:
                items.append(Item("forward", t))
                items += [Item("send", t, (head, k), err(t)) for k in range(head)]
            else:
                items.append(Item("recv", t, (head, rank), err(t)))
                items.append(Item("forward", t))
                items.append(Item("send", t, (rank, rank + 1), Msg(ACT, t, act_shapes[rank], dtype)))
        elif kind == "update":
            if rank != head:
                items.append(Item("wait", t, (head, rank), err(t)))
            items.append(Item("update", t))
    if rank != head:
        items.append(Item("flush", stop))
    return items


def evaluation(rank: int, world: int, rows: list[int], out_shapes: list[tuple[int, ...]],
               dtype: str = "float32") -> list[Item]:
    """Stage `rank`'s items for one pass over the test set in batches of `rows[j]` samples;
    `out_shapes[k]` is stage k's per-sample output shape. Evaluation batches ride the activation
    channels; every receive is posted up front (a batch is small next to the ring or the socket)."""
    head = world - 1
    up, down = (rank - 1, rank), (rank, rank + 1)
    items = []
    if rank:
        items += [Item("recv", j, up, Msg(EVAL, j, (n, *out_shapes[rank - 1]), dtype)) for j, n in enumerate(rows)]
    for j, n in enumerate(rows):
        if rank:
            items.append(Item("wait", j, up, Msg(EVAL, j, (n, *out_shapes[rank - 1]), dtype)))
        items.append(Item("evaluate", j))
        if rank != head:
            items.append(Item("send", j, down, Msg(EVAL, j, (n, *out_shapes[rank]), dtype)))
    if rank != head:
        items.append(Item("flush", len(rows)))
    return items


def hello(rank: int, world: int) -> list[Item]:
    """At connect: one message on every channel, one channel after the other in the global order, each
    end waiting until it went through. Communicators that connect lazily at their first op (nccl) are
    then all connected in an order no two stages can disagree on, and a channel that cannot connect is
    named before any training."""
    items = []
    for ch in channels(world):
        msg = Msg(HELLO, 0, (1,))
        if ch[0] == rank:
            items += [Item("send", 0, ch, msg), Item("flush", 0)]
        elif ch[1] == rank:
            items += [Item("recv", 0, ch, msg), Item("wait", 0, ch, msg)]
    return items


def ping(rank: int, world: int) -> list[Item]:
    """One round trip per cycle k -> k + 1 -> … -> head -> k, for k = head - 1 down to 0: together they
    pass every channel, and cycle k passes exactly two that no earlier cycle did, (k, k + 1) and
    (head, k), so the first message that does not arrive names its channel. Stage k times its cycle."""
    head = world - 1
    items = []
    for k in range(head - 1, -1, -1):
        msg = Msg(PING, k, (1,))
        if rank == k:
            items += [Item("send", k, (k, k + 1), msg), Item("recv", k, (head, k), msg),
                      Item("wait", k, (head, k), msg)]
        elif k < rank < head:
            items += [Item("recv", k, (rank - 1, rank), msg), Item("wait", k, (rank - 1, rank), msg),
                      Item("send", k, (rank, rank + 1), msg)]
        elif rank == head:
            items += [Item("recv", k, (head - 1, head), msg), Item("wait", k, (head - 1, head), msg),
                      Item("send", k, (head, k), msg)]
    if rank != head:
        items.append(Item("flush", 0))
    return items


# -- the checker -------------------------------------------------------------------------------------------
class Deadlock(RuntimeError):
    """The stages cannot all finish a call: each waits for an op that can never complete."""


class Mismatch(RuntimeError):
    """A receive met a send of another message (kind, key, shape or dtype)."""


class _Op:
    __slots__ = ("rank", "send", "channel", "msg", "done")

    def __init__(self, rank, send, channel, msg):
        self.rank, self.send, self.channel, self.msg, self.done = rank, send, channel, msg, False


def check(calls: list[list[list[Item]]], depth: int, communicator=lambda ch: ch) -> None:
    """Run `calls` (each: one item list per rank, in the order the stages get the calls) under
    in-order-per-communicator semantics; raise Deadlock or Mismatch. Every rank must finish each call
    before any later call is issued (the driver may wait for a call's results before it sends the next).
    `communicator` maps a channel to the communicator that carries it (the default: one per channel;
    `frozenset` gives one per pair of ranks, nccl's own default)."""
    world = len(calls[0]) if calls else 0
    queues: dict = {}          # (rank, communicator) -> deque of the rank's ops in issue order
    posted: list[dict] = [dict() for _ in range(world)]   # (channel, msg) -> _Op
    sends: list[deque] = [deque() for _ in range(world)]  # outstanding sends, oldest first
    bound = [max_sends(r, world, depth) for r in range(world)]
    programs: list[list[Item]] = [[] for _ in range(world)]
    pc = [0] * world

    def blocked(r: int, item: Item) -> bool:
        if item.op == "wait":
            return not posted[r][item.channel, item.msg].done
        if item.op == "flush":
            return any(not op.done for op in sends[r])
        return False

    def held(r: int) -> bool:
        """The Link's back-pressure: past `bound` outstanding sends the host waits for the oldest."""
        s = sends[r]
        while s and (len(s) > bound[r] or s[0].done):
            if not s[0].done:
                return True
            s.popleft()
        return False

    def advance(r: int) -> bool:
        moved = False
        while pc[r] < len(programs[r]) and not held(r):
            item = programs[r][pc[r]]
            if item.op in ("send", "recv"):
                if item.channel[0 if item.op == "send" else 1] != r:
                    raise Mismatch(f"rank {r} {item.op}s on channel {item.channel}, which is not its own")
                op = _Op(r, item.op == "send", item.channel, item.msg)
                queues.setdefault((r, communicator(item.channel)), deque()).append(op)
                if op.send:
                    sends[r].append(op)
                else:
                    posted[r][item.channel, item.msg] = op
            elif blocked(r, item):
                return moved
            elif item.op == "wait":
                del posted[r][item.channel, item.msg]
            pc[r] += 1
            moved = True
        return moved

    def match() -> bool:
        moved = False
        for (r, comm), q in list(queues.items()):
            if not q:
                continue
            peer = q[0].channel[1] if q[0].send else q[0].channel[0]
            other = queues.get((peer, comm))
            if not other or q[0].send == other[0].send:
                continue
            a, b = q.popleft(), other.popleft()
            send, recv = (a, b) if a.send else (b, a)
            if send.msg != recv.msg or send.channel != recv.channel:
                raise Mismatch(f"rank {recv.rank} posted {recv.msg} on {recv.channel} and got rank {send.rank}'s "
                               f"{send.msg} on {send.channel}")
            a.done = b.done = moved = True
        return moved

    for c, call in enumerate(calls):
        for r in range(world):
            programs[r] = programs[r][pc[r]:] + list(call[r])
            pc[r] = 0
        while any(advance(r) for r in range(world)) | match():
            pass
        stuck = [r for r in range(world) if pc[r] < len(programs[r]) or held(r)]
        if stuck:
            raise Deadlock(f"call {c}: " + "; ".join(
                _where(r, programs[r][pc[r]] if pc[r] < len(programs[r]) else None, queues) for r in stuck))


def _where(r: int, item: Item | None, queues) -> str:
    heads = {comm: q[0] for (rank, comm), q in queues.items() if rank == r and q}
    what = ", ".join(f"{'send' if op.send else 'recv'} {op.msg.kind} {op.msg.key} on {op.channel}"
                     for op in heads.values())
    at = f"{item.op} {item.msg.kind if item.msg else ''} {item.key}" if item else "its outstanding sends"
    return f"rank {r} stops at {at} (its ops first in line: {what})"
