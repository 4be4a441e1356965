"""Shared by the paper's experiment scripts: each cell of a grid is one `dfa-async train` process in its
own run directory, so a crash loses one cell, a finished cell is never recomputed and a cut one resumes."""
from __future__ import annotations

import argparse
import concurrent.futures
import subprocess
import sys
import threading
from pathlib import Path

from dfa_async import runlog

# The paper's conventions and training settings (its best_practices.py and bottleneck.py): SGD at lr 5e-4,
# batch 128; alignment on a held-out batch of 128 in eval mode.
PAPER = ["feedback.error_scale=paper", "model.block_order=paper", "optim.name=sgd", "optim.lr=0.0005",
         "optim.momentum=0", "train.batch_size=128", "alignment.data=test", "alignment.mode=eval",
         "alignment.probe_size=128", "checkpoint.every=0"]


def run_cell(name: str, settings: list[str], runs: Path) -> str:
    """Run one cell to the end; 'done', 'cached' (finished before) or the last line of its error."""
    run = runs / name
    log = run / "events.msgpack"
    if log.exists() and runlog.read(log, "done"):
        return "cached"
    args = [sys.executable, "-m", "dfa_async.cli", "train", "--no-progress", "--run-dir", str(run)]
    for s in settings:
        args += ["--set", s]
    p = subprocess.run(args, capture_output=True, text=True)
    return "done" if p.returncode == 0 else (p.stderr.strip().splitlines() or ["failed"])[-1]


def outcome(run: Path) -> dict | None:
    """A finished cell's test error (%) and alignment records [(step, [cos_mean per block])]."""
    log = run / "events.msgpack"
    if not log.exists():
        return None
    recs = runlog.read(log)
    done = [r for r in recs if r["kind"] == "done"]
    if not done:
        return None
    aligns = [r for r in recs if r["kind"] == "align"]
    return {"test_error": 100 * (1 - done[-1]["test_accuracy"]),
            "alignment": [(r["step"], [b["cos_mean"] for b in r["blocks"]]) for r in aligns]}


def arguments(doc: str, budgets: dict, out: str, argv=None) -> argparse.Namespace:
    """--budget, --seeds and --out, checked."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--budget", choices=sorted(budgets), default="smoke")
    ap.add_argument("--seeds", type=int, help="seeds per cell (default: the budget's)")
    ap.add_argument("--epochs", type=int, help="epochs per run (default: the budget's; another value needs another "
                    "--out, since a run directory refuses other settings)")
    ap.add_argument("--out", default=out)
    ap.add_argument("--jobs", type=int, default=1, help="cells run at once (each stage uses one thread: on 2 cores, "
                    "2 jobs keep both busy while a single-process cell runs)")
    args = ap.parse_args(argv)
    for flag in ("seeds", "epochs", "jobs"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            ap.error(f"--{flag}: {getattr(args, flag)}; it must be >= 1")
    return args


def command(script: str, args: argparse.Namespace) -> str:
    """The command line that reproduces a summary."""
    extra = "".join(f" --{k} {getattr(args, k)}" for k in ("seeds", "epochs") if getattr(args, k) is not None)
    return f"python examples/{script} --budget {args.budget}{extra} --out {args.out}"


def run_all(todo: list[dict], runs: Path, jobs: int = 1) -> int:
    """Run every cell (dicts with `name`, `sets` and `ray`: whether it starts a Ray instance), `jobs` at a
    time, printing each one's status as it ends; the number that failed. Cells never share a run
    directory; Ray cells run one at a time (each starts a private instance whose stages take every core),
    interleaved with single-process cells so that those fill the other core."""
    runs.mkdir(parents=True, exist_ok=True)
    if jobs > 1:
        ray, local = [c for c in todo if c.get("ray")], [c for c in todo if not c.get("ray")]
        todo = [c for pair in zip(ray, local) for c in pair] + ray[len(local):] + local[len(ray):]
    one_ray = threading.Semaphore(1)

    def run(cell):
        if not cell.get("ray"):
            return run_cell(cell["name"], cell["sets"], runs)
        with one_ray:
            return run_cell(cell["name"], cell["sets"], runs)

    failed = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run, cell): cell for cell in todo}
        for i, fut in enumerate(concurrent.futures.as_completed(futures)):
            status = fut.result()
            failed += status not in ("done", "cached")
            print(f"[{i + 1}/{len(todo)}] {futures[fut]['name']}: {status}", flush=True)
    return failed
