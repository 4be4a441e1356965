"""The driver: data, the schedule, evaluation, alignment probes, checkpoints and the event log, for
either backend. `train(config)` is the package's Python entry point."""
from __future__ import annotations

import errno
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import balance, checkpoint, config as config_mod, data, optim, windows
from .config import Config, ConfigError
from .executor import Pipeline
from . import process, rundir
from .runlog import EventLog
from .stage import Plan, StageFailure
from .storage.lock import RunLock


@dataclass
class Result:
    run_dir: Path | str  # a str for a URI
    steps: int
    test_accuracy: float
    test_loss: float
    seconds: float
    samples_per_s: float
    alignment: list = field(default_factory=list)
    restarts: int = 0
    stages: list = field(default_factory=list)
    text: bool = False  # a language model: the test set is validation windows, measured per token

    def summary(self) -> str:
        if self.text:
            return (f"val_loss={self.test_loss:.4f} nats/token ({self.test_loss / math.log(2):.4f} bits/token) "
                    f"token_accuracy={self.test_accuracy:.4f} steps={self.steps} time={self.seconds:.1f}s "
                    f"windows/s={self.samples_per_s:.0f} run_dir={self.run_dir}")
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
    drains = total // spe + sum(total // every for every in (cfg.checkpoint.every, cfg.train.eval_every) if every)
    if drains > MAX_DRAINS:
        raise ConfigError(f"train.max_steps: {total} steps drain the pipeline {drains} times (an evaluation every "
                          f"epoch of {spe} steps, a checkpoint every {cfg.checkpoint.every or total}); at most "
                          f"{MAX_DRAINS:,} are allowed: train fewer steps, or checkpoint less often")
    return total, spe


def check_memory(plan: Plan) -> None:
    """Refuse, before anything is built, a model whose weights and optimizer state alone exceed this
    machine's available memory where its stages would run here (the local backend, a private Ray
    instance); on a joined cluster the placement decides."""
    import psutil

    rt = plan.cfg.runtime
    if rt.backend == "ray" and (rt.address or os.environ.get("RAY_ADDRESS")) or rt.device == "cuda":
        return
    params = sum(p.numel() * p.element_size() for p in plan.shell().parameters())
    need = params * (4 if plan.cfg.optim.name in ("adam", "adamw") else 3)  # weights, gradients, optimizer state
    copies = rt.replicas if isinstance(rt.replicas, int) else 1  # every replica holds its own
    have = psutil.virtual_memory().available
    if need * copies > have:
        times = f" x {copies} replicas" if copies > 1 else ""
        raise ConfigError(f"model: its weights, gradients and {plan.cfg.optim.name} state need "
                          f"{need / 2**30:,.1f} GiB{times}, and this machine has {have / 2**30:,.1f} GiB available; "
                          "make the model smaller" + (", use fewer replicas" if copies > 1 else "")
                          + ", or run on a cluster (runtime.address)")


MAX_DRAINS = 1_000_000  # epoch ends and checkpoints of one run: each is listed up front (Plan.boundaries)


def make_pipeline(plan: Plan, ds: data.Dataset) -> Pipeline:
    if plan.cfg.runtime.backend == "ray":
        from .runtime import RayPipeline

        return RayPipeline(plan, ds)
    from .reference import LocalPipeline

    # The reference runs on a GPU only when asked to (runtime.device = cuda): it is the oracle.
    device = plan.cfg.runtime.device
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("runtime.device: cuda, but this process sees no GPU; use cpu or auto")
    process.setup(plan.cfg.runtime.threads)  # this process runs the stages
    return LocalPipeline(plan, plan.partition(), ds, "cuda" if device == "cuda" else "cpu")


def warn(message: str) -> None:
    print(f"dfa-async: warning: {message}", file=sys.stderr, flush=True)


def train(cfg: Config, run_dir: str | Path | None = None, *, model=None, progress: bool = False,
          metrics=None) -> Result:
    """Train as `cfg` says; resume when `run_dir` already holds a checkpoint of this config.
    `model`: a user's own nn.Sequential of blocks (see model.from_sequential) in place of cfg.model."""
    config_mod.validate(cfg, own_model=model is not None)
    ds = data.for_run(cfg)
    total, spe = step_counts(cfg, ds.samples)
    plan = Plan(cfg, ds.shape, ds.classes, total, spe, net=model, window=ds.window)
    check_memory(plan)
    plan = balance.resolve(plan)
    store = rundir.prepare(cfg, run_dir)
    lock = None
    try:
        lock = RunLock(store.local, store.name)  # before anything in the directory is read or changed
        cleaned = checkpoint.clean(store.local)
        begin = rundir.check(store, cfg, plan)
    except BaseException:
        if lock is not None:
            lock.release()
        store.discard()
        raise
    try:
        return _train(cfg, plan, ds, store, begin, cleaned, total, spe, progress, metrics)
    finally:
        lock.release()
        store.close()


def _train(cfg, plan, ds, store, begin, cleaned, total, spe, progress, metrics) -> Result:
    run_dir, found = store.local, begin.found
    log = EventLog(run_dir / "events.msgpack")
    for problem in log.problems:
        warn(problem)
    if log.repaired:
        log.write("repair", 0, torn_tail_offset=log.repaired[0], torn_tail_bytes=log.repaired[1])
    if cleaned:
        log.write("cleaned", 0, files=cleaned)
    for name, why in begin.skipped:
        where = found[0].name if found else "none (start from step 0)"
        warn(f"checkpoint {name} {why}; resuming from {where}")
        log.write("checkpoint_skipped", 0, path=name, reason=why, resumed_from=where)
    pipe = bar = driver = None
    try:
        pipe = make_pipeline(plan, ds)
        if found is None:
            log.write("config", 0, config=cfg.to_dict(), blocks=plan.num_blocks, steps=total,
                      steps_per_epoch=spe, partition=plan.partition(), backend=cfg.runtime.backend,
                      **({"vocab": ds.vocab} if ds.vocab else {}))  # a text's tokens, for `dfa-async sample`
            if not begin.fresh:
                log.write("resume", 0, checkpoint=None, changed=begin.changed)
        if metrics:
            log.write("metrics", 0, host=metrics.host, port=metrics.port)
        if (stages := pipe.describe()) is not None:
            log.write("stages", 0, **stages)
        for note in pipe.warnings():
            warn(note)
        probe_samples = None
        if cfg.alignment.every:
            held = ds.samples if cfg.alignment.data == "train" else len(ds.x_test)
            probe_samples = min(cfg.alignment.probe_size, held)  # the first samples of alignment.data
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="step", dynamic_ncols=True)
        driver = _Driver(cfg, plan, ds, pipe, log, store, probe_samples, metrics, bar, total, spe)
        failures = 0
        while True:
            try:  # a stage that cannot connect fails at the first call, here too
                driver.run(driver.restore(found, begin.changed))
                break
            except StageFailure as err:
                failures += 1
                found = checkpoint.latest(run_dir)
                where = found[0].name if found else "none (restart from step 0)"
                log.write("restart", driver.step, reason=str(err), failures=failures, checkpoint=where)
                if failures <= cfg.runtime.max_failures:
                    warn(f"{err}; every stage restarts from checkpoint {where} (failure {failures} of "
                         f"{cfg.runtime.max_failures} allowed, runtime.max_failures)")
                if failures > cfg.runtime.max_failures:
                    raise TrainingStopped(f"{err}; stopped after {failures} failures (runtime.max_failures = "
                                       f"{cfg.runtime.max_failures}); last good checkpoint: {where}") from err
                try:
                    pipe.restart()
                except ConfigError as lost:  # the cluster no longer has room for the stages (a node is gone)
                    log.write("stopped", driver.step, reason=str(lost), checkpoint=where)
                    raise TrainingStopped(f"{err}, and the stages cannot be placed again: {lost}; last good "
                                          f"checkpoint: {where}; rerun the same command when the cluster has "
                                          "room") from None
                if metrics:
                    metrics.restart()
        return driver.finish()
    except (KeyboardInterrupt, SystemExit) as stop:
        # SIGTERM (a job's time limit, `kill`) ends a driver through Ray's handler, sys.exit(SIGTERM), or
        # the CLI's, which does the same: stopped as Ctrl-C is.
        term = isinstance(stop, SystemExit)
        if term and stop.code != signal.SIGTERM:
            raise
        step = driver.step if driver else 0
        _try(lambda: log.write("interrupted", step, signal="SIGTERM" if term else "SIGINT"))
        raise Interrupted(f"{'terminated (SIGTERM)' if term else 'interrupted'} at step {step}; {_kept(run_dir)}; "
                          "rerun the same command to resume", signal.SIGTERM if term else signal.SIGINT) from None
    except OSError as err:
        if err.errno not in FULL:
            raise
        where = err.filename or run_dir
        raise StorageFull(f"no space left writing {where} ({os.strerror(err.errno)}); {_kept(run_dir)}; free "
                          "space and rerun the same command to resume") from None
    finally:
        if bar:
            bar.close()
        _try(log.close)
        if pipe is not None:
            pipe.close()


FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _try(fn, *args):
    """A last record or close on the way out; a full disk must not hide the error that is being raised."""
    try:
        fn(*args)
    except OSError:
        pass


def _kept(run_dir: Path) -> str:
    found = checkpoint.latest(run_dir)
    return f"kept: checkpoint {found[0].name} (step {found[1]['step']})" if found else "no checkpoint yet"


class TrainingStopped(RuntimeError):
    """The run gave up (too many stage failures); the message names the last good checkpoint."""


class Interrupted(RuntimeError):
    """Ctrl-C (SIGINT) or SIGTERM: the message gives the step and what was kept."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum


class StorageFull(RuntimeError):
    """The run directory's disk (or quota) is full; the message names the path and what was kept."""


class _Driver:
    """Carries out the schedule on a pipeline and records what happens."""

    def __init__(self, cfg, plan, ds, pipe, log, store, probe_samples, metrics, bar, total, spe):
        self.cfg, self.plan, self.ds, self.pipe, self.log = cfg, plan, ds, pipe, log
        self.store, self.run_dir = store, store.local
        self.probe_samples, self.metrics, self.bar = probe_samples, metrics, bar
        self.total, self.spe = total, spe
        self.timelines = windows.Timelines()
        self.last = {"test_accuracy": float("nan"), "test_loss": float("nan")}
        self.align_log, self.samples, self.seconds, self.step = [], 0, 0.0, 0
        self.t0 = time.time()
        self.settings = config_mod.to_toml(cfg)  # kept in every checkpoint: the run's fingerprint
        self.probe_how = (cfg.alignment.data, cfg.alignment.mode)

    def restore(self, found, changed=()) -> int:
        """Load `found` (checked against the model by rundir.check before any stage started)."""
        if found is None:
            return 0
        path, state = found
        self.pipe.load_state(state["blocks"])
        start = int(state["step"]) + 1
        self.log.write("resume", start, checkpoint=path.name, changed=list(changed))
        return start

    def run(self, start: int) -> None:
        if self.bar:
            self.bar.reset(total=self.total)
            self.bar.update(start)
        t0 = self.t0 = time.time()
        if start >= self.total:  # resumed after the last checkpoint: only the final evaluation is left
            self._evaluate(self.total - 1)
            return
        try:
            self._run_windows(start, t0)
        finally:
            self.seconds += time.time() - t0

    def _run_windows(self, start: int, t0: float) -> None:
        """The run's windows (windows.drive): each boundary and probe is waited for, then served."""
        cfg = self.cfg
        probes = set()
        if self.probe_samples is not None:
            probes = set(range(cfg.alignment.every - 1, self.total, cfg.alignment.every))
        marks = set(self.plan.boundaries)

        def at_cut(t: int) -> None:
            if t in probes:
                self.align_log.append(measure_alignment(self.pipe, self.probe_samples, t, self.log, self.metrics,
                                                        *self.probe_how))
            if t in marks:
                self._boundary(t)

        windows.drive(self.pipe, start, self.total, marks | probes, cfg.runtime.window,
                      lambda win: self._record(win, t0), at_cut)

    def _record(self, win, t0: float) -> None:
        """Log a finished window: losses (every log_every steps; every one is checked), timestamps."""
        tr = self.cfg.train
        self.samples += (win.stop - win.start) * tr.batch_size
        self.step = win.stop - 1
        sps = self.samples / max(self.seconds + time.time() - t0, 1e-9)
        for t, loss in zip(range(win.start, win.stop), win.losses):
            if not math.isfinite(loss):
                if tr.on_nonfinite == "skip":  # every stage skipped this step's update (Stage.update)
                    self.log.write("skip", t, loss=loss)
                    continue
                self.log.write("error", t, message=f"loss is {loss} at step {t}")
                raise FloatingPointError(f"training diverged: loss is {loss} at step {t}; {_kept(self.run_dir)}; "
                                         "lower optim.lr, or set train.on_nonfinite = skip")
            if (t + 1) % tr.log_every == 0 or t == self.total - 1:
                self.log.write("train", t, loss=loss, epoch=t / self.spe, samples_per_s=sps,
                               lr=optim.lr_at(self.cfg.optim, t, self.total, self.spe))
                if self.metrics:
                    self.metrics.train(t, loss, sps)
        self.timelines.write(win, self.log, win.stop - 1)
        if self.metrics:
            self.metrics.window(win, (win.stop - win.start) * tr.batch_size)
        if self.bar:
            self.bar.set_postfix(loss=f"{win.losses[-1]:.4f}", refresh=False)
            self.bar.update(win.stop - win.start)

    def _boundary(self, t: int) -> None:
        cfg = self.cfg
        every = cfg.train.eval_every
        if (t + 1) % self.spe == 0 or t == self.total - 1 or (every and (t + 1) % every == 0):
            self._evaluate(t)
        if (cfg.checkpoint.every and (t + 1) % cfg.checkpoint.every == 0) or t == self.total - 1:
            path = checkpoint.save(self.run_dir, t, {"step": t, "blocks": self.pipe.state(),
                                                     "rng": torch.get_rng_state(), "settings": self.settings},
                                   cfg.checkpoint.keep)
            self.log.write("checkpoint", t, path=path.name)
            self.store.push()

    def _evaluate(self, t: int) -> None:
        acc, tl = self.pipe.evaluate()
        self.last = {"test_accuracy": acc, "test_loss": tl}
        # seconds: the run's training wall time so far, for loss against time (report)
        self.log.write("eval", t, epoch=(t + 1) / self.spe, seconds=self.seconds + time.time() - self.t0, **self.last)
        if self.metrics:
            self.metrics.eval(t, acc, tl)
        if self.bar:
            self.bar.set_postfix(test_acc=f"{acc:.4f}", refresh=False)

    def finish(self) -> Result:
        cfg, total = self.cfg, self.total
        if self.probe_samples is not None and total % cfg.alignment.every:
            self.align_log.append(measure_alignment(self.pipe, self.probe_samples, total - 1, self.log, self.metrics,
                                                    *self.probe_how))
        checkpoint.export(self.pipe.model(), self.run_dir / "final_model.pt")
        stages = self.timelines.summary(self.log, total)
        shown = self.store.name if self.store.remote else self.run_dir
        result = Result(shown, total, self.last["test_accuracy"], self.last["test_loss"], self.seconds,
                        self.samples / max(self.seconds, 1e-9), self.align_log, self.pipe.restarts, stages,
                        text=bool(self.plan.window))
        self.log.write("done", total, test_accuracy=result.test_accuracy, test_loss=result.test_loss,
                       seconds=self.seconds, samples_per_s=result.samples_per_s, restarts=result.restarts)
        return result


def measure_alignment(pipe, n: int, t: int, log: EventLog, metrics=None, data: str = "train",
                      mode: str = "train") -> dict:
    """Alignment of every block on the weights in effect at the forward of step t, measured by the stages
    themselves on the first n samples of `data` with the blocks in `mode`."""
    blocks = pipe.align(n, data, mode)
    log.write("align", t, blocks=blocks, data=data, mode=mode)
    if metrics:
        metrics.alignment(t, blocks)
    return {"step": t, "blocks": blocks}
