"""Shared by the paper's experiment scripts: each cell of a grid is one `dfa-async train` run in its own
run directory, so a crash loses one cell, a finished cell is never recomputed and a cut one resumes.
Cells run as local processes, or with `--submit` as Ray jobs on a cluster (the `paper` budget's way)."""
from __future__ import annotations

import argparse
import collections
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from dfa_async import runlog
from dfa_async.storage import remote

ROOT = Path(__file__).resolve().parents[1]
# The paper's conventions and training settings (its best_practices.py and bottleneck.py): SGD at lr 5e-4,
# batch 128; alignment on a held-out batch of 128 in eval mode.
PAPER = ["feedback.error_scale=paper", "model.block_order=paper", "optim.name=sgd", "optim.lr=0.0005",
         "optim.momentum=0", "train.batch_size=128", "alignment.data=test", "alignment.mode=eval",
         "alignment.probe_size=128", "checkpoint.every=0"]


def records(run: str | Path) -> list[dict] | None:
    """The event log of a run directory (a path or an fsspec URI); None if it has none."""
    if not remote.is_uri(run):
        log = remote.local_path(run) / remote.LOG
        return runlog.read(log) if log.exists() else None
    fs, path = remote.filesystem(str(run), "--runs")
    log = f"{path.rstrip('/')}/{remote.LOG}"
    if not fs.exists(log):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        fs.get(log, f"{tmp}/{remote.LOG}")
        return runlog.read(f"{tmp}/{remote.LOG}")


def finished(run: str | Path) -> bool:
    recs = records(run)
    return bool(recs) and any(r["kind"] == "done" for r in recs)


def outcome(run: str | Path) -> dict | None:
    """A finished cell's test error (%), alignment records [(step, [cos_mean per block])] and the last
    alignment record's per-block dicts (`final`: cos_mean, pre_cos_mean, zero_share, ...)."""
    recs = records(run)
    done = [r for r in recs or [] if r["kind"] == "done"]
    if not done:
        return None
    aligns = [r for r in recs if r["kind"] == "align"]
    return {"test_error": 100 * (1 - done[-1]["test_accuracy"]),
            "alignment": [(r["step"], [b["cos_mean"] for b in r["blocks"]]) for r in aligns],
            "final": aligns[-1]["blocks"] if aligns else []}


def train_args(run: str | Path, settings: list[str]) -> list[str]:
    args = ["-m", "dfa_async.cli", "train", "--no-progress", "--run-dir", str(run)]
    for s in settings:
        args += ["--set", s]
    return args


def run_process(run: str | Path, settings: list[str]) -> str:
    """One cell as a child process; 'done' or the last line of its error."""
    p = subprocess.run([sys.executable, *train_args(run, settings)], capture_output=True, text=True)
    return "done" if p.returncode == 0 else (p.stderr.strip().splitlines() or ["failed"])[-1]


class Jobs:
    """Cells as Ray jobs through the Jobs SDK (`address`: the cluster's dashboard, e.g.
    http://head:8265). Each job's working dir is this repository (without .venv, .git, docs), so the
    cluster needs Ray and torch but not dfa_async; its run directory must be storage that every node and
    this machine reach (a shared path or an fsspec URI). A job of an earlier invocation still running for
    the same run directory is waited on, not submitted again."""

    POLL_S = 5.0

    def __init__(self, address: str, python: str):
        from ray.job_submission import JobStatus, JobSubmissionClient

        self.client, self.python, self.status = JobSubmissionClient(address), python, JobStatus
        self.live = {j.metadata.get("dfa_run"): j.submission_id for j in self.client.list_jobs()
                     if j.metadata and j.status in (JobStatus.PENDING, JobStatus.RUNNING)}

    def _submit(self, **job) -> str:
        deadline = time.time() + 120
        while True:
            try:
                return self.client.submit_job(**job)
            except RuntimeError as err:  # a new head's job agent answers a little after its dashboard
                if "No available agent" not in str(err) or time.time() > deadline:
                    raise
                time.sleep(self.POLL_S)

    def run(self, run: str | Path, settings: list[str]) -> str:
        job = self.live.get(str(run))
        if job is None:
            entry = " ".join(shlex.quote(a) for a in [self.python, *train_args(run, settings)])
            env = {}
            if data := os.environ.get("DFA_ASYNC_DATA"):  # absolute: a job runs in its working dir's copy
                env["DFA_ASYNC_DATA"] = data if "://" in data else str(Path(data).expanduser().resolve())
            job = self._submit(entrypoint=entry, metadata={"dfa_run": str(run)},
                               runtime_env={"working_dir": str(ROOT), "excludes": [".venv", ".git", "docs"],
                                            "env_vars": env})
        final = (self.status.SUCCEEDED, self.status.FAILED, self.status.STOPPED)
        while (status := self.client.get_job_status(job)) not in final:
            time.sleep(self.POLL_S)  # polling a remote service: the Jobs SDK has no blocking wait
        if status == self.status.SUCCEEDED:
            return "done"
        lines = self.client.get_job_logs(job).strip().splitlines()
        return f"job {job} {status.value.lower()}: {lines[-1] if lines else 'no output'}"


def arguments(doc: str, budgets: dict, out: str, argv=None) -> argparse.Namespace:
    """--budget, --seeds, --epochs, --out, --runs, --jobs, --set and --submit, checked."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--budget", choices=sorted(budgets), default="smoke")
    ap.add_argument("--seeds", type=int, help="seeds per cell (default: the budget's)")
    ap.add_argument("--epochs", type=int, help="epochs per run (default: the budget's; another value needs another "
                    "--out, since a run directory refuses other settings)")
    ap.add_argument("--out", default=out, help="where the summary, CSV and plots go")
    ap.add_argument("--runs", help="where the cells' run directories go: a path or an fsspec URI (default OUT/runs)")
    ap.add_argument("--jobs", type=int, default=1, help="cells run at once (each stage uses one thread: on 2 cores, "
                    "2 jobs keep both busy while a single-process cell runs)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a setting added to every cell, e.g. runtime.device=cuda (repeatable)")
    ap.add_argument("--submit", metavar="DASHBOARD", help="run every cell as a Ray job on the cluster whose dashboard "
                    "answers at this address (e.g. http://head:8265); --runs must then be shared storage")
    ap.add_argument("--python", default="python", help="the interpreter a job runs on the cluster (with --submit)")
    args = ap.parse_args(argv)
    for flag in ("seeds", "epochs", "jobs"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            ap.error(f"--{flag}: {getattr(args, flag)}; it must be >= 1")
    for s in args.set:
        if "=" not in s or "." not in s.split("=", 1)[0]:
            ap.error(f"--set: {s!r}; use SECTION.KEY=VALUE")
    if args.runs is None:
        args.runs = Path(args.out).resolve() / "runs"
    elif not remote.is_uri(args.runs):
        args.runs = remote.local_path(args.runs).resolve()  # a job's working dir is not ours
    if args.budget == "smoke":
        print("smoke budget: a plumbing check (a slice of the data, 1 epoch); its accuracies are near chance and "
              "say nothing about the method (--budget cpu for results)", flush=True)
    return args


def command(script: str, args: argparse.Namespace) -> str:
    """The command line that reproduces a summary."""
    extra = "".join(f" --{k} {getattr(args, k)}" for k in ("seeds", "epochs") if getattr(args, k) is not None)
    extra += "".join(f" --set {shlex.quote(s)}" for s in args.set)
    return f"python examples/{script} --budget {args.budget}{extra} --out {args.out}"


def run_all(todo: list[dict], args: argparse.Namespace) -> int:
    """Run every cell (dicts with `name`, `sets` and `ray`: whether it starts a Ray instance), `args.jobs`
    at a time, printing each one's status as it ends; the number that failed. Locally, one Ray cell runs
    at a time (each starts a private instance whose stages take every core) while single-process cells
    fill the other slots; on a cluster (--submit), its scheduler places them."""
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if not remote.is_uri(args.runs):
        Path(args.runs).mkdir(parents=True, exist_ok=True)
    jobs = Jobs(args.submit, args.python) if args.submit else None
    count, failed = 0, 0
    report = threading.Lock()

    def done(cell, status):
        nonlocal count, failed
        with report:
            count += 1
            failed += status not in ("done", "cached")
            print(f"[{count}/{len(todo)}] {cell['name']}: {status}", flush=True)

    waiting = []
    for cell in todo:
        if finished(remote.join(args.runs, cell["name"])):
            done(cell, "cached")
        else:
            waiting.append(cell)
    exclusive = collections.deque(c for c in waiting if c.get("ray") and not jobs)
    shared = collections.deque(c for c in waiting if not (c.get("ray") and not jobs))
    one_at_a_time = {c["name"] for c in exclusive}
    turn = threading.Condition()
    busy = [False]  # a Ray cell is running

    def take():
        with turn:
            while True:
                if exclusive and not busy[0]:
                    busy[0] = True
                    return exclusive.popleft()
                if shared:
                    return shared.popleft()
                if not exclusive:
                    return None
                turn.wait()

    def worker():
        while (cell := take()) is not None:
            run_dir, sets = remote.join(args.runs, cell["name"]), cell["sets"] + args.set
            try:
                status = jobs.run(run_dir, sets) if jobs else run_process(run_dir, sets)
            except Exception as err:  # one cell's failure (e.g. a refused submission) is that cell's
                status = f"{type(err).__name__}: {err}"
            if cell["name"] in one_at_a_time:
                with turn:
                    busy[0] = False
                    turn.notify_all()
            done(cell, status)

    threads = [threading.Thread(target=worker) for _ in range(args.jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failed
