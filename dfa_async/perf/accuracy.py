"""Time to accuracy (or, `loss = True`, to a test loss: a language model's validation loss per token):
every mode trains the same model on the same minibatches until it reaches a target, and reports the
training wall seconds (evaluation excluded) and the steps it took.
DFA usually needs more steps than backprop for the same accuracy, so a samples/s speedup alone can
mislead; this reports both sides.

Modes: `backprop` (single process), `reference-dfa` (single process), `dataplane-D{d}` (the Ray
trainer), `gpipe`, `1f1b`, `ddp` (backprop on the same N Ray workers). The test set is evaluated every
`eval_every` steps on the driver, with the pipelines drained there."""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

from .. import balance, config as config_mod, data, process, tables, windows
from ..baselines.local import Backprop, token_loss
from ..reference import LocalPipeline
from ..run import step_counts
from ..stage import Plan


@torch.no_grad()
def test_measures(net: torch.nn.Module, ds, batch: int) -> tuple[float, float]:
    """Test accuracy and mean test loss, per sample or per position of a sequence."""
    net.eval()
    correct, total = 0, 0.0
    for a in range(0, len(ds.x_test), batch):
        out, y = net(ds.x_test[a:a + batch]), ds.y_test[a:a + batch]
        correct += int((out.argmax(-1) == y).sum())
        total += float(token_loss(out, y)) * y.numel()
    net.train()
    return correct / ds.y_test.numel(), total / ds.y_test.numel()


class _Windows:
    """A DFA pipeline (reference or Ray) driven in windows as the trainer's driver does."""

    def __init__(self, pipe):
        self.pipe = pipe

    def run(self, a: int, b: int) -> None:
        windows.drive(self.pipe, a, b)

    def model(self):
        return self.pipe.model()

    def close(self):
        self.pipe.close()


def to_target(make, plan, ds, target: float, eval_every: int, loss: bool = False) -> dict:
    """Train with `make()` until the test accuracy reaches `target` (`loss`: the test loss falls to it) or
    the run's steps are spent."""
    trainer = make()
    seconds, best, reached, t = 0.0, float("inf") if loss else 0.0, None, 0
    try:
        while t < plan.total_steps and reached is None:
            stop = min(t + eval_every, plan.total_steps)
            t0 = time.perf_counter()
            trainer.run(t, stop)
            seconds += time.perf_counter() - t0
            t = stop
            value = test_measures(trainer.model(), ds, plan.cfg.train.eval_batch_size)[1 if loss else 0]
            best = min(best, value) if loss else max(best, value)
            if (value <= target) if loss else (value >= target):
                reached = t
    finally:
        trainer.close()
    what = "loss" if loss else "accuracy"
    return {"reached": reached is not None, "steps": t, "epochs": t / plan.steps_per_epoch,
            "seconds": seconds, f"best_{what}": best, f"last_{what}": value}


def run(cfg: config_mod.Config, target: float, depths=(1, 2), eval_every: int = 0, baselines: bool = True,
        microbatches: int = 4, out: Path | None = None, loss: bool = False) -> list[dict]:
    import ray

    from ..baselines import BackpropGroup
    from ..runtime import RayPipeline, cluster

    if loss and not 0 < target < float("inf"):
        raise ValueError(f"--to-loss: {target}; give a test loss > 0, e.g. 2.0 (nats per token)")
    if not loss and not 0 < target <= 1:
        raise ValueError(f"--to-accuracy: {target}; give a test accuracy in (0, 1], e.g. 0.97")
    if eval_every < 0:
        raise ValueError(f"--eval-every: {eval_every}; it must be >= 0 (0: a quarter epoch)")
    if not depths or min(depths) < 1:
        raise ValueError(f"--depths: {','.join(map(str, depths))}; give integers >= 1, comma-separated, e.g. 1,2")
    config_mod.validate(cfg)
    process.setup(cfg.runtime.threads)  # the single-process modes run here
    ds = data.for_run(cfg)
    total, spe = step_counts(cfg, ds.samples)
    every = eval_every or max(spe // 4, 1)
    cuts = list(range(every - 1, total, every))

    def plan_at(depth: int) -> Plan:
        own = copy.deepcopy(cfg)
        own.runtime.depth = depth
        plan = balance.resolve(Plan(own, ds.shape, ds.classes, total, spe, window=ds.window))
        plan.boundaries = sorted(set(plan.boundaries) | set(cuts))  # drained at every evaluation
        return plan

    n = len(plan_at(1).partition())
    batch = cfg.train.batch_size
    if baselines and (batch % n or batch % microbatches or microbatches < n):
        raise ValueError(f"--microbatches: {microbatches} with train.batch_size {batch} on {n} workers; the batch "
                         f"must divide into the microbatches and into {n} ddp shares, and 1f1b needs at least "
                         f"{n} microbatches (or pass --no-baselines)")
    modes = {"backprop": lambda: Backprop(plan_at(1), ds),
             "reference-dfa": lambda: _Windows(LocalPipeline(plan_at(1), None, ds))}
    for d in depths:
        modes[f"dataplane-D{d}"] = lambda d=d: _Windows(RayPipeline(plan_at(d), ds))
    if baselines:
        for kind in ("gpipe", "1f1b"):
            modes[f"{kind}-M{microbatches}"] = lambda kind=kind: BackpropGroup(kind, plan_at(1), ds, microbatches)
        modes["ddp"] = lambda: BackpropGroup("ddp", plan_at(1), ds, 1, workers=n)
    started = not ray.is_initialized()
    if started:
        cluster.start_local(n)
    records = []
    try:
        for mode, make in modes.items():
            rec = {"mode": mode, "workers": 1 if mode in ("backprop", "reference-dfa") else n,
                   **to_target(make, plan_at(1), ds, target, every, loss)}
            rec["samples_per_s"] = rec["steps"] * cfg.train.batch_size / rec["seconds"]
            best = rec["best_loss" if loss else "best_accuracy"]
            print(f"{mode:<16} {'reached' if rec['reached'] else 'NOT reached'} {target} after {rec['steps']} steps "
                  f"({rec['epochs']:.2f} epochs) in {rec['seconds']:.1f} s; best {best:.4f}", flush=True)
            records.append(rec)
    finally:
        if started:
            cluster.shutdown()
    table = markdown(records, cfg, target, every, loss)
    print(table)
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"target": target, "measure": "loss" if loss else "accuracy", "eval_every": every, "workers": n,
                "config": cfg.to_dict()}
        (out / "accuracy.json").write_text(json.dumps({"meta": meta, "records": records}, indent=2))
        (out / "accuracy.md").write_text(table + "\n")
    return records


def markdown(records: list[dict], cfg, target: float, every: int, loss: bool = False) -> str:
    fastest = min((r["seconds"] for r in records if r["reached"]), default=None)
    what = "loss" if loss else "accuracy"
    model = f"a gpt of {cfg.model.n_layer} layers" if cfg.model.kind == "gpt" else f"model widths {cfg.model.widths}"
    lines = [f"Time to a test {what} of {target:.4g} on {cfg.data.name}, {model}, batch "
             f"{cfg.train.batch_size}, {cfg.optim.name} lr {cfg.optim.lr}; evaluated every {every} steps "
             "(evaluation time excluded)", ""]
    rows = [[r["mode"], r["workers"], "yes" if r["reached"] else "no", r["steps"], f"{r['epochs']:.2f}",
             f"{r['seconds']:.1f}", f"{r['samples_per_s']:.0f}", f"{r[f'best_{what}']:.4f}",
             f"{r['seconds'] / fastest:.2f}x" if r["reached"] and fastest else None] for r in records]
    lines.append(tables.markdown(["mode", "workers", "reached", "steps", "epochs", "train seconds", "samples/s",
                                  f"best {what}", "vs fastest"], rows, "lrlrrrrrr"))
    return "\n".join(lines)
