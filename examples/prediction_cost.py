"""What runtime.weight_prediction costs per step: a config's run on the Ray trainer with prediction off and
on, timed side by side in alternating rounds on the same workers and the same minibatches (steps/s after a
warm-up; drift on a shared machine hits both alike), and each one's ratio to the first.

    python examples/prediction_cost.py --config examples/configs/shakespeare_char.toml   # docs/rules.md
    python examples/prediction_cost.py --set runtime.depth=3                             # the MNIST MLP
"""
from __future__ import annotations

import argparse
import copy

from dfa_async import balance, config, data, process
from dfa_async.perf.modes import measure_pipeline
from dfa_async.run import step_counts
from dfa_async.runtime import RayPipeline, cluster
from dfa_async.stage import Plan

WARMUP = 10


def main(argv=None) -> dict[bool, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="a config whose runtime.depth > 1 (default: the built-in settings; the backend "
                    "is Ray)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--steps", type=int, default=300, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    cfg = config.load(args.config, ["runtime.backend=ray", *args.set])
    if cfg.runtime.depth < 2:
        ap.error(f"--config: runtime.depth is {cfg.runtime.depth}; prediction changes nothing without updates in "
                 "flight (give D >= 2, e.g. --set runtime.depth=2)")
    process.setup(cfg.runtime.threads)
    ds = data.for_run(cfg)
    total = WARMUP + args.steps
    _, per_epoch = step_counts(cfg, ds.samples)

    def plan_for(predict: bool) -> Plan:
        own = copy.deepcopy(cfg)
        own.runtime.weight_prediction = predict
        plan = balance.resolve(Plan(own, ds.shape, ds.classes, total, per_epoch, window=ds.window))
        plan.boundaries = sorted({WARMUP - 1, total - 1})  # drained after the warm-up and at the end only
        return plan

    plans = {False: plan_for(False), True: plan_for(True)}
    best = {False: 0.0, True: 0.0}
    cluster.start_local(len(plans[False].partition()))
    try:
        for r in range(args.rounds):
            for predict, plan in plans.items():
                sps, _ = measure_pipeline(lambda: RayPipeline(plan, ds), WARMUP, args.steps, cfg.runtime.window)
                best[predict] = max(best[predict], sps)
                print(f"round {r + 1}  prediction {'on ' if predict else 'off'}  {sps:8.1f} steps/s", flush=True)
    finally:
        cluster.shutdown()
    print(f"D = {cfg.runtime.depth}, {len(plans[False].partition())} stages, best of {args.rounds} rounds of "
          f"{args.steps} steps: prediction on runs {best[True] / best[False]:.3f}x the steps/s of off "
          f"({best[True]:.1f} against {best[False]:.1f})")
    return best


if __name__ == "__main__":
    main()
