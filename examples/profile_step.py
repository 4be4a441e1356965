"""Where a single-process step's time goes, DFA against backprop, op by op (torch profiler, one thread).

The bench's balanced model (N square tanh blocks of WIDTH and a head, as `dfa-async bench` builds it),
both rules on the same minibatches, the same optimizer call. Prints, per op and input shapes, the
self CPU time per step of each rule and the difference, largest first, and both totals.

    python examples/profile_step.py --width 576 --batch 128 --stages 2 --steps 200

It shows which products the running step makes expensive: a weight-gradient product reads the input
its block produced a whole forward earlier (out of cache), where backprop's input-gradient product,
the one DFA skips, reads operands just written."""
from __future__ import annotations

import argparse
import collections

import torch
from torch.profiler import ProfilerActivity, profile

from dfa_async.perf import bench
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
    _, plan, ds = bench.setup(args.width, args.batch, 1, args.stages, warmup, args.steps)
    plan.cfg.runtime.depth = 1
    pipe = LocalPipeline(plan, None, ds, "cpu")
    torch.set_num_threads(1)
    bp = bench.backprop_stepper(plan, ds, fused=True)
    pipe.collect(pipe.submit(0, warmup))
    for t in range(warmup):
        bp(t)
    span = range(warmup, warmup + args.steps)
    dfa = per_step(lambda: pipe.collect(pipe.submit(span.start, span.stop)), args.steps)
    back = per_step(lambda: [bp(t) for t in span], args.steps)
    pipe.close()
    rows = sorted(set(dfa) | set(back), key=lambda k: -max(dfa[k], back[k]))
    table = [(op, shapes, dfa[(op, shapes)], back[(op, shapes)]) for op, shapes in rows]
    print(f"{args.width}-wide, batch {args.batch}, {plan.num_blocks} blocks; self CPU us per step, "
          f"{args.steps} steps, 1 thread\n")
    print(f"{'op':<34} {'input shapes':<58} {'dfa':>8} {'backprop':>9}")
    for op, shapes, d, b in table[:args.rows]:
        print(f"{op[:34]:<34} {shapes[:58]:<58} {d:8.0f} {b:9.0f}")
    d_all, b_all = sum(dfa.values()), sum(back.values())
    print(f"\ntotal per step: dfa {d_all:.0f} us, backprop {b_all:.0f} us, ratio {d_all / b_all:.3f} "
          "(the profiler's own cost included)")
    return table


if __name__ == "__main__":
    main()
