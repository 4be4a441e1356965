"""Where a single-process step's time goes, DFA against backprop, op by op (torch profiler, one thread).

The bench's balanced model (N square tanh blocks of WIDTH and a head, as `dfa-async bench` builds it),
both rules on the same minibatches, the same optimizer call, each profiled over two halves of the steps
in the order DFA, backprop, backprop, DFA (a host whose speed drifts slows both alike). Prints, per op and
input shapes, the self CPU time per step of each rule, largest first, both totals, and the split into
ops only one rule runs and ops both run: the ratio DFA would reach if the shared ops cost it what they
cost backprop is what skipping backprop's input-gradient products can buy at most.

    python examples/profile_step.py --width 576 --batch 128 --stages 2 --steps 200

A single op's time can differ by 2x between processes: a product's cost depends on whether its output
and operands are still cached, which the allocator decides and the profiler's own allocations change
(docs/results.md). Compare totals over runs, not one op in one run."""
from __future__ import annotations

import argparse
import collections

import torch
from torch.profiler import ProfilerActivity, profile

from dfa_async.baselines.local import Backprop
from dfa_async.perf import modes
from dfa_async.reference import LocalPipeline


def per_step(fn, steps: int) -> collections.Counter:
    """Self CPU microseconds per step of every (op, input shapes) that `fn` runs."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    out = collections.Counter()
    for ev in prof.key_averages(group_by_input_shape=True):
        out[(ev.key, str(ev.input_shapes))] += ev.self_cpu_time_total / steps
    return out


def main(argv=None) -> list[tuple]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=576)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--stages", type=int, default=2, help="the model of the bench for N stages (N blocks + head)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rows", type=int, default=20)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warmup = 20
    _, plan, ds = modes.setup(args.width, args.batch, 1, args.stages, warmup, args.steps)
    plan.cfg.runtime.depth = 1
    pipe = LocalPipeline(plan, None, ds, "cpu")
    torch.set_num_threads(1)
    bp = Backprop(plan, ds, fused=True).step
    pipe.collect(pipe.submit(0, warmup))
    for t in range(warmup):
        bp(t)
    half = args.steps // 2
    a, b = (range(warmup, warmup + half), range(warmup + half, warmup + 2 * half))
    dfa = per_step(lambda: pipe.collect(pipe.submit(a.start, a.stop)), 2 * half)
    back = per_step(lambda: [bp(t) for t in a], 2 * half)
    back += per_step(lambda: [bp(t) for t in b], 2 * half)
    dfa += per_step(lambda: pipe.collect(pipe.submit(b.start, b.stop)), 2 * half)
    pipe.close()
    rows = sorted(set(dfa) | set(back), key=lambda k: -max(dfa[k], back[k]))
    table = [(op, shapes, dfa[(op, shapes)], back[(op, shapes)]) for op, shapes in rows]
    print(f"{args.width}-wide, batch {args.batch}, {plan.num_blocks} blocks; self CPU us per step, "
          f"{2 * half} steps, 1 thread\n")
    print(f"{'op':<34} {'input shapes':<58} {'dfa':>8} {'backprop':>9}")
    for op, shapes, d, b in table[:args.rows]:
        print(f"{op[:34]:<34} {shapes[:58]:<58} {d:8.0f} {b:9.0f}")
    d_all, b_all = sum(dfa.values()), sum(back.values())
    print(f"\ntotal per step: dfa {d_all:.0f} us, backprop {b_all:.0f} us, ratio {d_all / b_all:.3f} "
          "(the profiler's own cost included)")
    s = split(table)
    print(f"ops only backprop runs: {s['bp_only']:.0f} us ({s['bp_only'] / b_all:.0%} of its step); only DFA: "
          f"{s['dfa_only']:.0f} us; ops both run: dfa {s['shared_dfa']:.0f} us, backprop {s['shared_bp']:.0f} us\n"
          f"ratio with the shared ops at backprop's cost (what skipping its input-gradient products can buy): "
          f"{s['bound']:.3f}")
    return table


def split(table: list[tuple]) -> dict:
    """Self time of the ops only one rule runs and of those both run (per op and input shapes), and the
    ratio DFA's step would have if the shared ops cost it what they cost backprop."""
    out = {"bp_only": 0.0, "dfa_only": 0.0, "shared_dfa": 0.0, "shared_bp": 0.0}
    for _, _, d, b in table:
        if d and b:
            out["shared_dfa"] += d
            out["shared_bp"] += b
        else:
            out["dfa_only" if d else "bp_only"] += d or b
    out["bound"] = (out["shared_bp"] + out["dfa_only"]) / (out["shared_bp"] + out["bp_only"])
    return out


if __name__ == "__main__":
    main()
