"""The driver: data, the schedule, evaluation, alignment probes, checkpoints and the event log, for
either backend. `train(config)` is the package's Python entry point."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint, config as config_mod, data, feedback, optim, rules, schedule
from .config import Config, ConfigError
from .runlog import EventLog
from .stage import Plan


@dataclass
class Result:
    run_dir: Path
    steps: int
    test_accuracy: float
    test_loss: float
    seconds: float
    samples_per_s: float
    alignment: list = field(default_factory=list)
    restarts: int = 0

    def summary(self) -> str:
        return (f"test_accuracy={self.test_accuracy:.4f} test_error={100 * (1 - self.test_accuracy):.2f}% "
                f"test_loss={self.test_loss:.4f} steps={self.steps} time={self.seconds:.1f}s "
                f"samples/s={self.samples_per_s:.0f} run_dir={self.run_dir}")


def step_counts(cfg: Config, n_train: int) -> tuple[int, int]:
    spe = n_train // cfg.train.batch_size
    if spe == 0:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is larger than the {n_train} training "
                          f"samples; use at most {n_train}")
    total = cfg.train.epochs * spe if cfg.train.epochs else cfg.train.max_steps
    if cfg.train.max_steps:
        total = min(total, cfg.train.max_steps)
    return total, spe


def prepare_run_dir(cfg: Config, run_dir: str | Path | None) -> Path:
    if run_dir is None:
        name = cfg.train.name or (f"{cfg.data.name}-{cfg.model.kind}-{cfg.feedback.rule}-"
                                  f"{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}")
        run_dir = Path(cfg.train.root) / name
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def make_pipeline(plan: Plan):
    if plan.cfg.runtime.backend == "ray":
        from .distributed import RayPipeline

        return RayPipeline(plan)
    from .reference import LocalPipeline

    return LocalPipeline(plan, plan.partition())


def evaluate(pipe, x: torch.Tensor, y: torch.Tensor, batch: int) -> tuple[float, float]:
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch):
        logits = pipe.evaluate(x[i:i + batch])
        correct += (logits.argmax(1) == y[i:i + batch]).sum().item()
        loss += F.cross_entropy(logits, y[i:i + batch], reduction="sum").item()
    return correct / len(x), loss / len(x)


def train(cfg: Config, run_dir: str | Path | None = None, *, model=None, progress: bool = False,
          metrics=None) -> Result:
    """Train as `cfg` says; resume when `run_dir` already holds a checkpoint of this config.
    `model`: a user's own nn.Sequential of blocks (see model.from_sequential) in place of cfg.model."""
    config_mod.validate(cfg, own_model=model is not None)
    tr = cfg.train
    ds = data.load(cfg.data, tr.seed)
    total, spe = step_counts(cfg, len(ds.x_train))
    run_dir = prepare_run_dir(cfg, run_dir)
    saved = config_mod.to_toml(cfg)
    cfg_path = run_dir / "config.toml"
    found = checkpoint.latest(run_dir)
    if found is None and (run_dir / "events.msgpack").exists():
        raise ConfigError(f"--run-dir {run_dir}: holds a run's log but no checkpoint to resume from; "
                          "choose another directory")
    if found is not None and cfg_path.exists() and cfg_path.read_text() != saved:
        raise ConfigError(f"--run-dir {run_dir}: holds a run with other settings ({cfg_path}); resume it with "
                          "the same settings or choose another directory")
    if not cfg_path.exists():
        write_text(cfg_path, saved)

    plan = Plan(cfg, ds.shape, ds.classes, total, spe, net=model)
    log = EventLog(run_dir / "events.msgpack")
    pipe = make_pipeline(plan)
    start = 0
    if found is not None:
        path, state = found
        pipe.load_state(state["blocks"])
        start = int(state["step"]) + 1
        log.write("resume", start, checkpoint=str(path.name))
    else:
        log.write("config", 0, config=cfg.to_dict(), blocks=plan.num_blocks, steps=total,
                  steps_per_epoch=spe, partition=plan.partition(), backend=cfg.runtime.backend)

    marks = schedule.boundaries(total, spe, cfg.checkpoint.every)
    probe = None
    if cfg.alignment.every:
        n = min(cfg.alignment.probe_size, len(ds.x_train))
        probe = (ds.x_train[:n], ds.y_train[:n])
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
    t_start, samples, last = time.time(), 0, {"test_accuracy": float("nan"), "test_loss": float("nan")}
    align_log = []
    order, order_epoch = None, -1
    try:
        for op in schedule.ops(start, total, cfg.runtime.depth, marks):
            t = op.step
            if op.kind == "forward":
                epoch = t // spe
                if epoch != order_epoch:
                    order, order_epoch = data.epoch_order(len(ds.x_train), tr.seed, epoch), epoch
                idx = torch.from_numpy(order[(t % spe) * tr.batch_size:(t % spe + 1) * tr.batch_size])
                loss = pipe.forward(t, ds.x_train[idx], ds.y_train[idx])
                samples += len(idx)
                if (t + 1) % tr.log_every == 0 or t == total - 1:
                    loss = float(loss)
                    if not math.isfinite(loss):
                        log.write("error", t, message=f"loss is {loss} at step {t}")
                        raise FloatingPointError(f"training diverged: loss is {loss} at step {t}; lower optim.lr")
                    log.write("train", t, loss=loss, epoch=t / spe, lr=_lr(cfg, t, total, spe))
                    if metrics:
                        metrics.train(t, loss, samples / max(time.time() - t_start, 1e-9))
                    if bar:
                        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                if probe is not None and (t + 1) % cfg.alignment.every == 0:
                    align_log.append(measure_alignment(cfg, plan, pipe, probe, t, log, metrics))
                if bar:
                    bar.update(1)
            elif op.kind == "update":
                pipe.update(t)
            else:  # boundary: the pipeline is drained
                if (t + 1) % spe == 0 or t == total - 1:
                    acc, tl = evaluate(pipe, ds.x_test, ds.y_test, tr.eval_batch_size)
                    last = {"test_accuracy": acc, "test_loss": tl}
                    log.write("eval", t, epoch=(t + 1) / spe, **last)
                    if metrics:
                        metrics.eval(t, acc, tl)
                    if bar:
                        bar.set_postfix(test_acc=f"{acc:.4f}", refresh=False)
                if (cfg.checkpoint.every and (t + 1) % cfg.checkpoint.every == 0) or t == total - 1:
                    path = checkpoint.save(run_dir, t, {"step": t, "blocks": pipe.state(),
                                                        "rng": torch.get_rng_state()}, cfg.checkpoint.keep)
                    log.write("checkpoint", t, path=path.name)
        seconds = time.time() - t_start
        if probe is not None and (total % cfg.alignment.every):
            align_log.append(measure_alignment(cfg, plan, pipe, probe, total - 1, log, metrics))
        model = pipe.model()
        checkpoint.export(model, run_dir / "final_model.pt")
        restarts = getattr(pipe, "restarts", 0)
        log_timelines(log, pipe, total)
        result = Result(run_dir, total, last["test_accuracy"], last["test_loss"], seconds,
                        samples / max(seconds, 1e-9), align_log, restarts)
        log.write("done", total, test_accuracy=result.test_accuracy, test_loss=result.test_loss,
                  seconds=seconds, samples_per_s=result.samples_per_s)
        return result
    finally:
        if bar:
            bar.close()
        log.close()
        pipe.close()


def write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _lr(cfg, t, total, spe):
    return optim.lr_at(cfg.optim, t, total, spe)


def measure_alignment(cfg: Config, plan: Plan, pipe, probe, t: int, log: EventLog, metrics=None) -> dict:
    """Alignment of every hidden block on the weights in effect at the forward of step t."""
    model = pipe.model()
    dims = [math.prod(s) for s in plan.out_shapes[:-1]]
    Bs = [feedback.matrix(k, dims, plan.classes, cfg.feedback.init, cfg.feedback.normalization, cfg.train.seed)
          for k in range(len(dims))]
    blocks = rules.alignment(model, Bs, probe[0], probe[1], cfg.feedback.error_scale, seed=cfg.train.seed)
    log.write("align", t, blocks=blocks)
    if metrics:
        metrics.alignment(t, blocks)
    return {"step": t, "blocks": blocks}


def log_timelines(log: EventLog, pipe, total: int) -> None:
    """Per-stage busy time and idle fraction over the run, from host timestamps."""
    if not hasattr(pipe, "timelines"):
        return
    for s, tl in enumerate(pipe.timelines()):
        if not tl:
            continue
        busy = sum(end - start for _, _, start, end in tl)
        span = tl[-1][3] - tl[0][2]
        log.write("stage", total, stage=s, busy_s=busy, span_s=span,
                  idle_fraction=max(0.0, 1 - busy / span) if span > 0 else 0.0, calls=len(tl))
