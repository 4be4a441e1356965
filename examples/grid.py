"""Shared by the paper's experiment scripts: each cell of a grid is one `dfa-async train` process in its
own run directory, so a crash loses one cell, a finished cell is never recomputed and a cut one resumes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dfa_async import runlog


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
