"""Soak and load: many pipelined steps of a small model on the Ray trainer while a sampler records, every
`--every` seconds, the driver's and each stage's memory (RSS) and the object store's usage; then the same
with one stage made slow (a block that sleeps), which the others must wait for without their queues or
memory growing. Writes soak.csv, soak.png and soak.md (each series' spread after warm-up).

    python examples/soak.py --steps 20000 --out docs/soak
"""
from __future__ import annotations

import argparse
import csv
import re
import threading
import time
from pathlib import Path

import psutil
import torch
from torch import nn

from dfa_async import config, model as models, runlog, train


class Sleep(nn.Module):
    """Identity that takes `seconds` (a stage made artificially slow)."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return x


def settings(steps: int, run: str):
    batch, n_train = 32, 4096
    return config.from_dict({
        "data": {"name": "synthetic", "n_train": n_train, "n_test": 256},
        "model": {"widths": [64, 64, 64]},
        "train": {"batch_size": batch, "epochs": -(-steps // (n_train // batch)), "max_steps": steps,
                  "log_every": 100, "name": run},
        "runtime": {"backend": "ray", "depth": 3, "num_cpus": 4},
        "checkpoint": {"every": 2000, "keep": 2},
        "alignment": {"every": 1000, "probe_size": 64},
    })


def plasma_mib(address: str) -> float:
    from ray._private.internal_api import memory_summary

    text = memory_summary(address=address, stats_only=True)
    m = re.search(r"Plasma memory usage (\d+) MiB", text)
    return float(m.group(1)) if m else float("nan")


def sample(run_dir: Path, rows: list, stop: threading.Event, every: float, label: str) -> None:
    """Every `every` s: driver RSS, each stage's RSS (pids from the run's `stages` record), object store."""
    import ray

    me, t0, stages = psutil.Process(), time.time(), None
    while not stop.wait(every):
        log = run_dir / "events.msgpack"
        if stages is None and log.exists():
            recs = runlog.read(log, "stages")
            stages = [psutil.Process(p) for p in recs[-1]["pids"]] if recs else None
        if stages is None or not ray.is_initialized():
            continue
        try:
            row = {"run": label, "t": round(time.time() - t0, 2), "driver_mib": me.memory_info().rss / 2**20,
                   "store_mib": plasma_mib(ray.get_runtime_context().gcs_address)}
            for i, p in enumerate(stages):
                row[f"stage{i}_mib"] = p.memory_info().rss / 2**20
        except (psutil.NoSuchProcess, ConnectionError, RuntimeError):
            continue
        rows.append(row)


def soak(label: str, steps: int, root: Path, every: float, slow: float) -> tuple[list, dict]:
    cfg = settings(steps, label)
    cfg.train.root = str(root)
    net = None
    if slow:
        seq = models.build(cfg, (1, 8, 8), 10)
        seq[1] = nn.Sequential(*seq[1], Sleep(slow))  # the second stage sleeps every forward
        net = seq
    rows, stop = [], threading.Event()
    sampler = threading.Thread(target=sample, args=(root / label, rows, stop, every, label), daemon=True)
    sampler.start()
    try:
        res = train(cfg, model=net)
    finally:
        stop.set()
        sampler.join()
    tl = runlog.read(root / label / "events.msgpack", "timeline")
    facts = {"run": label, "steps": res.steps, "seconds": res.seconds, "steps_per_s": res.steps / res.seconds,
             "max_in_flight": max(r["in_flight"] for r in tl), "depth": cfg.runtime.depth,
             "max_stash_kib": max(r["stash_bytes"] for r in tl) / 1024, "restarts": res.restarts}
    return rows, facts


def spread(rows: list, key: str, warmup: float) -> tuple[float, float, float]:
    """Mean after warm-up, and the relative spread (max - min) / mean there."""
    vals = [r[key] for r in rows[int(len(rows) * warmup):] if key in r]
    mean = sum(vals) / len(vals)
    return mean, (max(vals) - min(vals)) / mean if mean else 0.0, len(vals)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20000, help="steps of the steady run (>= 10000 for the soak)")
    ap.add_argument("--slow-steps", type=int, default=3000, help="steps of the run with a slow stage")
    ap.add_argument("--slow-ms", type=float, default=5.0, help="sleep of the slow stage per forward")
    ap.add_argument("--every", type=float, default=1.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=0.2, help="share of the samples left out as warm-up")
    ap.add_argument("--out", default="soak-results")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="dfa-soak-"))
    steady, f1 = soak("steady", args.steps, root, args.every, 0.0)
    slow, f2 = soak("slow-stage", args.slow_steps, root, args.every, args.slow_ms / 1000)
    rows = steady + slow
    keys = sorted({k for r in rows for k in r if k.endswith("_mib")})
    with open(out / "soak.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["run", "t", *keys])
        w.writeheader()
        w.writerows(rows)
    lines = ["# Soak", "", f"Command: `python examples/soak.py --steps {args.steps} --slow-steps {args.slow_steps} "
             f"--slow-ms {args.slow_ms:g} --out {args.out}`", "",
             "| run | steps | steps/s | max in-flight (D) | max stash KiB | restarts |", "|---|---:|---:|---:|---:|---:|"]
    for f in (f1, f2):
        lines.append(f"| {f['run']} | {f['steps']} | {f['steps_per_s']:.0f} | {f['max_in_flight']} ({f['depth']}) | "
                     f"{f['max_stash_kib']:.1f} | {f['restarts']} |")
    lines += ["", f"Memory after the first {args.warmup:.0%} of samples (spread = (max - min) / mean; flat: <= 5 %):",
              "", "| run | series | samples | mean MiB | spread |", "|---|---|---:|---:|---:|"]
    for label, part in (("steady", steady), ("slow-stage", slow)):
        for k in keys:
            mean, rel, n = spread(part, k, args.warmup)
            lines.append(f"| {label} | {k[:-4]} | {n} | {mean:.1f} | {rel:.1%}{'' if rel <= 0.05 else ' (not flat)'} |")
    (out / "soak.md").write_text("\n".join(lines) + "\n")
    plot(steady, slow, keys, out / "soak.png")
    print("\n".join(lines))


def plot(steady: list, slow: list, keys: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, (label, part) in zip(axes, (("steady", steady), ("one slow stage", slow))):
        for k in keys:
            pts = [(r["t"], r[k]) for r in part if k in r]
            if pts:
                ax.plot(*zip(*pts), label=k[:-4])
        ax.set_title(label)
        ax.set_xlabel("seconds")
    axes[0].set_ylabel("MiB (RSS; object store: plasma usage)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
