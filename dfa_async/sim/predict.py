"""Samples/s of N workers predicted from measured per-block costs (`perf/profile.py`), activation sizes
and a link: the asynchronous DFA pipeline (the stages' own schedule, depth D), its grid of S stages x R
replicas (runtime.replicas), GPipe and 1F1B backprop (m microbatches) and DDP.

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

from dataclasses import replace

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
        contention: float = 1.0, cores: float = float("inf"), per_op_s: float = 0.0,
        reduce_s: list[float] | None = None) -> float:
    """`reduce_s`: seconds each stage's update also waits (the replicas' all-reduce, see `grid`)."""
    st = partition.ranges(sizes)
    n = len(st)
    fwd = [contention * sum(blocks[k]["dfa_forward_s"] for k in s) + per_op_s for s in st]
    upd = [contention * sum(blocks[k]["dfa_update_s"] for k in s) + per_op_s + (reduce_s[i] if reduce_s else 0.0)
           for i, s in enumerate(st)]
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


def allreduce_s(link: Interconnect, nbytes: float, workers: int) -> float:
    """Seconds of a ring all-reduce of `nbytes` over `workers`: from the measured 2-worker all-reduce where
    the link has one (a 2-worker ring moves the bytes once), else from the link's latency and bandwidth."""
    if workers < 2:
        return 0.0
    ring = 2 * (workers - 1) / workers  # a ring moves this many times the bytes through each worker
    if link.allreduce_rate:
        return ring * nbytes / link.allreduce_rate
    return 2 * (workers - 1) * link.latency_s + ring * nbytes / link.bandwidth


def grid(blocks: list[dict], sizes: list[int], batch: int, classes: int, link: Interconnect, depth: int,
         replicas: int, contention: float = 1.0, cores: float = float("inf"), per_op_s: float = 0.0) -> float:
    """R replicas of the DFA pipeline on `sizes`, each on batch / R rows, every stage summing its gradients
    over its replicas in its update (an all-reduce of the stage's parameters, not overlapped). A block's
    DFA costs on fewer rows follow its measured backprop costs at those rows (`bp_cost`: a matrix product on
    fewer rows is less efficient than its share), except its optimizer step, which every replica takes
    whole; its messages shrink with the rows. The replicas run alike, so one is simulated, on its share of
    the cores."""
    rows = batch // replicas
    share = []
    for b in blocks:
        (f_all, b_all), (f_rows, b_rows) = bp_cost(b, batch), bp_cost(b, rows)
        opt = min(b.get("optimizer_s", 0.0), b["dfa_update_s"])
        share.append({**b, "dfa_forward_s": b["dfa_forward_s"] * (f_rows / f_all if f_all else 1 / replicas),
                      "dfa_update_s": (b["dfa_update_s"] - opt) * (b_rows / b_all if b_all else 1 / replicas) + opt,
                      "out_bytes": b["out_bytes"] * rows / batch})
    reduce = [allreduce_s(link, sum(blocks[k]["param_bytes"] for k in s), replicas) for s in partition.ranges(sizes)]
    return replicas * dfa(share, sizes, rows, classes, link, depth, contention, cores / replicas, per_op_s, reduce)


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
    reduce_s = allreduce_s(replace(link, allreduce_rate=allreduce_rate), params, workers)
    share = max(1.0, workers / cores)
    return batch / (share * (f[0] + b[0] + o[0] + per_step_s) + (share if link.host else 1.0) * reduce_s)
