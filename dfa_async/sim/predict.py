"""Samples/s of N workers predicted from measured per-block costs (`perf/profile.py`), activation sizes
and a link: the asynchronous DFA pipeline (the stages' own schedule, depth D), GPipe and 1F1B backprop
(m microbatches) and DDP.

Each worker's compute is the sum of its blocks' costs (measured alone) times `contention`: how much
slower a worker computes while others compute at once (shared caches and memory bandwidth), taken from
the bench's ceiling, which is exactly N stages computing at once. With `cores` fewer than the workers,
the engine also time-shares each core among the running ops of the workers placed on it (engine.py),
so a stage that waits costs no core. On a `host` link the sender's and the receiver's cores move the
bytes, so a transfer also keeps both busy; on GPU links a DMA engine does. `per_action_s` / `per_op_s` is the
software time per forward or backward action of a pipeline library on one block, or per forward or
update op of the DFA stages (their loop, bookkeeping and calls around the compute); both calibrated on
one worker (see sim.validate)."""
from __future__ import annotations

from .. import partition, schedule
from .engine import Op, finish_times
from .links import Interconnect, transfer_s

STEPS = 48  # simulated steps; the rate is taken between step STEPS // 4 and the last but one


def _host(link: Interconnect, nbytes: float) -> float:
    """Busy time of one end of a transfer."""
    return link.per_message_s + (nbytes / link.bandwidth if link.host else 0.0)


def _rate(done: dict, key, batch: int) -> float:
    t1, t2 = STEPS // 4, STEPS - 2
    return batch * (t2 - t1) / (done[key(t2)] - done[key(t1)])


def dfa(blocks: list[dict], sizes: list[int], batch: int, classes: int, link: Interconnect, depth: int,
        contention: float = 1.0, cores: float = float("inf"), per_op_s: float = 0.0) -> float:
    st = partition.ranges(sizes)
    n = len(st)
    fwd = [contention * sum(blocks[k]["dfa_forward_s"] for k in s) + per_op_s for s in st]
    upd = [contention * sum(blocks[k]["dfa_update_s"] for k in s) + per_op_s for s in st]
    act = [blocks[s[-1]]["out_bytes"] for s in st]
    err = 4 * batch * classes
    workers = []
    for s in range(n):
        ops = []
        for kind, t in schedule.ops(0, STEPS, depth, [STEPS - 1]):
            if kind == "forward":
                busy = fwd[s] + (_host(link, act[s - 1]) if s else 0) + (_host(link, act[s]) if s < n - 1 else 0)
                if s == n - 1:
                    busy += (n - 1) * _host(link, err)
                after = [(("F", t, s - 1), transfer_s(link, act[s - 1]))] if s else []
                ops.append(Op(("F", t, s), busy, after))
            elif kind == "update":
                head = s == n - 1
                after = [] if head else [(("F", t, n - 1), transfer_s(link, err))]
                ops.append(Op(("U", t, s), upd[s] + (0 if head else _host(link, err)), after))
        workers.append(ops)
    done = finish_times(workers, cores)
    return _rate(done, lambda t: ("F", t, n - 1), batch)  # forwards: the final drain holds no forward


def bp_cost(block: dict, rows: int) -> tuple[float, float]:
    """(forward s, backward s) of a block on `rows` samples: measured, or linear in rows between (or beyond)
    the two nearest row counts the profile measured."""
    table = {int(r): v for r, v in block["bp"].items()}
    if rows in table:
        return tuple(table[rows])
    near = sorted(table, key=lambda r: abs(r - rows))[:2]
    if len(near) == 1:
        return tuple(v * rows / near[0] for v in table[near[0]])
    (r1, r2), (a, b) = near, (table[near[0]], table[near[1]])
    return tuple(max(x + (y - x) * (rows - r1) / (r2 - r1), 0.0) for x, y in zip(a, b))


def _bp_costs(blocks, st, rows, contention):
    f = [contention * sum(bp_cost(blocks[k], rows)[0] for k in s) for s in st]
    b = [contention * sum(bp_cost(blocks[k], rows)[1] for k in s) for s in st]
    o = [contention * sum(blocks[k]["optimizer_s"] for k in s) for s in st]
    return f, b, o


def pipeline(kind: str, blocks: list[dict], sizes: list[int], batch: int, link: Interconnect, microbatches: int,
             contention: float = 1.0, cores: float = float("inf"), per_action_s: float = 0.0) -> float:
    """GPipe (every forward, then every backward) or 1F1B (N - s - 1 forwards, then a backward after each
    forward, then the rest of the backwards) with an optimizer step per minibatch on every stage.
    `per_action_s`: the library's software time per forward or backward action of each block (autograd
    and module calls are per block, so a stage of k blocks pays k of it)."""
    st = partition.ranges(sizes)
    n, m = len(st), microbatches
    rows = batch // m
    f, b, o = _bp_costs(blocks, st, rows, contention)
    f = [v + per_action_s * len(s) for v, s in zip(f, st)]
    b = [v + per_action_s * len(s) for v, s in zip(b, st)]
    act = [blocks[s[-1]]["out_bytes"] * rows / batch for s in st]
    workers = []
    for s in range(n):
        order = []
        if kind == "gpipe":
            order = [("F", i) for i in range(m)] + [("B", i) for i in range(m)]
        else:
            warm = min(n - s - 1, m)
            order = [("F", i) for i in range(warm)]
            for i in range(m - warm):
                order += [("F", warm + i), ("B", i)]
            order += [("B", i) for i in range(m - warm, m)]
        ops = []
        for t in range(STEPS):
            for op, i in order:
                if op == "F":
                    busy = f[s] + (_host(link, act[s - 1]) if s else 0) + (_host(link, act[s]) if s < n - 1 else 0)
                    after = [(("F", t, i, s - 1), transfer_s(link, act[s - 1]))] if s else []
                else:
                    busy = b[s] + (_host(link, act[s]) if s < n - 1 else 0) + (_host(link, act[s - 1]) if s else 0)
                    after = [(("B", t, i, s + 1), transfer_s(link, act[s]))] if s < n - 1 else []
                ops.append(Op((op, t, i, s), busy, after))
            ops.append(Op(("O", t, s), o[s]))
        workers.append(ops)
    done = finish_times(workers, cores)
    return _rate(done, lambda t: ("O", t, 0), batch)


def ddp(blocks: list[dict], workers: int, batch: int, link: Interconnect, contention: float = 1.0,
        cores: float = float("inf"), allreduce_rate: float = 0.0, per_step_s: float = 0.0) -> float:
    """Every worker: forward and backward of the whole model on batch / N samples, a ring all-reduce of
    the gradients (not overlapped with the backward), the optimizer step; all workers alike, so the
    cores are time-shared when N exceeds them. `allreduce_rate`: bytes/s of a measured 2-worker
    all-reduce (else the ring's transfers at the link's bandwidth); `per_step_s`: DDP's own software time
    per step (its bucket hooks; calibrated on one worker)."""
    rows = batch // workers
    f, b, o = _bp_costs(blocks, [list(range(len(blocks)))], rows, contention)
    params = sum(blk["param_bytes"] for blk in blocks)
    reduce_s = 0.0
    if workers > 1:
        ring = 2 * (workers - 1) / workers  # a ring moves this many times the gradients through each worker
        if allreduce_rate:  # a 2-worker ring moves ring = 1 times the gradients
            reduce_s = ring * params / allreduce_rate
        else:
            reduce_s = 2 * (workers - 1) * link.latency_s + ring * params / link.bandwidth
    share = max(1.0, workers / cores)
    return batch / (share * (f[0] + b[0] + o[0] + per_step_s) + (share if link.host else 1.0) * reduce_s)
