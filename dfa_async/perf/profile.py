"""Per-block costs for the scaling simulator, measured in one process with the workers' thread count:
for DFA each block's forward and update (optimizer included) at the minibatch; for backprop each block's
forward and backward at the microbatch and at the minibatch, and its optimizer step; the bytes of each
block's output and parameters. Written by the bench as `profile.json`."""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from .. import optim
from ..balance import Solo
from ..stage import Plan

REPEATS = 11  # timed repetitions per cost (their median), after one warm-up


def _median(fn, repeats: int = REPEATS) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def block_profile(plan: Plan, microbatches=(), workers: int = 1) -> list[dict]:
    """One record per block; `bp` maps a row count (the minibatch, each microbatch size, the ddp share)
    to [forward s, backward s]."""
    cfg = plan.cfg
    batch = cfg.train.batch_size
    rows_list = sorted({batch, batch // max(workers, 1)} | {batch // m for m in microbatches} - {0})
    g = torch.Generator().manual_seed(0)
    shapes = [plan.in_shape] + plan.out_shapes
    y = torch.randint(0, plan.classes, (batch,), generator=g)
    net = plan.build()
    out = []
    for k in range(plan.num_blocks):
        x = torch.randn(batch, *shapes[k], generator=g)
        head = k == plan.num_blocks - 1
        fwd_s, upd_s = Solo(plan, [k], seed=k).op_times(REPEATS)
        block = net[k]
        opt = optim.make(list(block.parameters()), cfg.optim)

        def bp(rows: int) -> tuple[float, float]:
            xin = x[:rows].clone().requires_grad_(k > 0)  # the first block needs no input gradient
            def fwd():
                return block(xin)
            def bwd():
                o = block(xin)
                loss = F.cross_entropy(o, y[:rows]) if head else None
                t0 = time.perf_counter()
                if head:
                    loss.backward()
                else:
                    o.backward(torch.ones_like(o))
                return time.perf_counter() - t0
            bwd()
            return _median(fwd), sorted(bwd() for _ in range(REPEATS))[REPEATS // 2]

        for p in block.parameters():
            p.grad = torch.zeros_like(p)
        params = list(block.parameters())
        opt_s = _median(opt.step) if params else 0.0
        out.append({
            "block": k, "dfa_forward_s": fwd_s, "dfa_update_s": upd_s,
            "bp": {str(r): list(bp(r)) for r in rows_list},
            "optimizer_s": opt_s, "out_bytes": 4 * batch * math.prod(shapes[k + 1]),
            "param_bytes": 4 * sum(p.numel() for p in params)})
    return out


def fastest(profiles: list[list[dict]]) -> list[dict]:
    """The per-block profiles of several rounds, each cost its smallest over the rounds (sizes are the
    same in every round). The bench keeps each mode's best round; its profile, timed once, could fall in
    a slow spell of a shared host (measured: rounds 10-60 % apart on one) and skew every prediction."""
    out = []
    for rounds in zip(*profiles):
        first = rounds[0]
        out.append({**first,
                    "dfa_forward_s": min(r["dfa_forward_s"] for r in rounds),
                    "dfa_update_s": min(r["dfa_update_s"] for r in rounds),
                    "optimizer_s": min(r["optimizer_s"] for r in rounds),
                    "bp": {rows: [min(r["bp"][rows][i] for r in rounds) for i in range(2)] for rows in first["bp"]}})
    return out
