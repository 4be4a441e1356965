"""`dfa-async simulate`: predicted samples/s of the asynchronous DFA pipeline, GPipe, 1F1B and DDP for N
workers, from a profile written by `dfa-async bench` (per-block costs, activation sizes, the measured
link and compute slowdown of this machine), and its check against the bench's own measurements."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

from .. import partition, tables
from . import links
from .predict import ddp, dfa, grid, pipeline

__all__ = ["predict_mode", "validate", "scaling", "links"]


def contention_of(prof: dict, workers: int, cores: float) -> float:
    """How much slower a worker computes while all N compute at once, beyond the time-sharing of the
    cores (which the engine models): the bench's ceiling over the costs measured alone, less N / cores."""
    return prof["slowdown"] / max(1.0, workers / cores)


def predict_mode(mode: str, prof: dict, batch: int, classes: int, link: links.Interconnect, contention: float = 1.0,
                 cores: float = float("inf"), per_action_s: float = 0.0) -> float:
    """Samples/s of one bench mode (dataplane-D{d}, gpipe-M{m}, 1f1b-M{m}, ddp) on prof's partition, or of
    dataplane-{S}x{R}-D{d} (S even stages of prof's blocks, R replicas)."""
    blocks, sizes = prof["blocks"], prof["partition"]
    if g := GRID.fullmatch(mode):
        s, r, d = map(int, g.groups())
        return grid(blocks, partition.even(len(blocks) - 1, s), batch, classes, link, d, r, contention, cores,
                    per_action_s)
    if mode.startswith("dataplane-D"):
        return dfa(blocks, sizes, batch, classes, link, int(mode.rsplit("D", 1)[1]), contention, cores, per_action_s)
    if mode.startswith(("gpipe-M", "1f1b-M")):
        kind, m = mode.split("-M")
        return pipeline(kind, blocks, sizes, batch, link, int(m), contention, cores, per_action_s)
    if mode == "ddp":
        return ddp(blocks, len(sizes), batch, link, contention, cores, link.allreduce_rate, per_action_s)
    raise ValueError(f"mode: {mode!r} is not simulated (dataplane-D*, dataplane-SxR-D*, gpipe-M*, 1f1b-M*, ddp)")


GRID = re.compile(r"dataplane-(\d+)x(\d+)-D(\d+)")


def _per_action(mode: str, prof: dict, measured: float, batch: int, classes: int, link: links.Interconnect,
                cores: float) -> float:
    """Software time fitted on one worker (no transfers, no bubble): per forward or backward action of a
    block for the pipelines, per step for DDP, per forward or update op for the DFA stages."""
    bare = predict_mode(mode, prof, batch, classes, link, contention_of(prof, 1, cores), cores)
    if mode == "ddp":
        actions = 1
    elif "-M" in mode:
        actions = 2 * int(mode.split("-M")[1]) * sum(prof["partition"])
    else:
        actions = 2  # a forward and an update
    return max(0.0, (batch / measured - batch / bare) / actions)


def message_costs(profile: dict, batch: int, classes: int, cores: float) -> dict[tuple[int, str], float]:
    """Each mode's cost per message on N workers, (N, mode) -> seconds of CPU at each end beyond the link's
    ping-pong, fitted on the bench's tiny-model runs (`perf.bench.tiny_runs`): with the software time
    fitted on the tiny model's one-worker run, the cost that makes the N-worker prediction equal the
    N-worker measurement. Empty for a profile without those runs."""
    tiny = profile.get("tiny")
    if not tiny:
        return {}
    one = tiny["1"]
    dataplane = min((m for m in one if m.startswith("dataplane-D")), key=lambda m: int(m.rsplit("D", 1)[1]),
                    default=None)
    out = {}
    for n, runs in ((int(k), v) for k, v in tiny.items() if k != "1"):
        wire = profile["per_workers"].get(str(n), {}).get("transport", "gloo")
        for mode, measured in runs.items():
            if not mode.startswith(("gpipe-M", "1f1b-M", "dataplane-D")):
                continue
            dfa = mode.startswith("dataplane-D")
            base = links.Interconnect(**profile["links"][wire if dfa else "gloo"])
            calib = dataplane if dfa else mode
            if calib not in one:
                continue
            act = _per_action(calib, one, one[calib], batch, classes, links.Interconnect(**profile["links"]["gloo"]), cores)

            def predicted(c: float) -> float:
                link = replace(base, per_message_s=base.per_message_s + c)
                return predict_mode(mode, runs, batch, classes, link, contention_of(runs, n, cores), cores, act)

            lo, hi = 0.0, 0.05  # predictions fall as the cost grows: bisect
            if predicted(lo) <= measured:
                out[n, mode] = 0.0
                continue
            for _ in range(40):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if predicted(mid) > measured else (lo, mid)
            out[n, mode] = (lo + hi) / 2
    return out


def _load(folder: Path) -> tuple[dict, dict]:
    folder = Path(folder)
    for name in ("bench.json", "profile.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"BENCH_DIR: {folder / name} does not exist; pass the --out folder of "
                                    "`dfa-async bench`")
    out = []
    for name, keys in (("bench.json", ("meta", "records")), ("profile.json", ("batch", "classes", "per_workers", "links"))):
        try:
            doc = json.loads((folder / name).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"BENCH_DIR: {folder / name} is not JSON ({str(err).splitlines()[0][:80]}); pass the "
                             "--out folder of `dfa-async bench`") from None
        missing = [k for k in keys if not isinstance(doc, dict) or k not in doc]
        if missing:
            raise ValueError(f"BENCH_DIR: {folder / name} is not what `dfa-async bench` writes (no "
                             f"{', '.join(missing)}); pass the --out folder of `dfa-async bench`")
        out.append(doc)
    return out[0], out[1]


def warnings(profile: dict) -> list[str]:
    """The bench's own warnings about the profile's models (e.g. too small to mean anything), which every
    prediction fitted on them inherits."""
    return [f"Warning: fitted on a bench whose {w['too_small']}" for _, w in sorted(profile["per_workers"].items())
            if isinstance(w, dict) and w.get("too_small")]


def validate(folder: Path, tolerance: float = 0.15) -> tuple[list[dict], str]:
    """Every simulated mode the bench measured in `folder`: measured and predicted samples/s, error, and
    how far apart the measurement's own rounds were (best over worst round, less 1).

    Three figures are fitted, not predicted, each from a run on one worker (no transfers, no bubble):
    torch.distributed.pipelining's software time per forward or backward action of a block, (measured
    step - simulated step) / (2 x microbatches x blocks); DDP's software time per step; and the DFA
    stages' time per forward or update op beyond its compute, (measured step - simulated step) / 2, from
    the one-worker run of the smallest depth, then used for every depth and N. Those one-worker rows are
    marked `calibration`. A fourth, each mode's cost per message on N workers, is fitted on separate
    runs of a tiny model where the profile has them (`message_costs`)."""
    bench, profile = _load(folder)
    batch, classes, cores = profile["batch"], profile["classes"], profile["cpus"]
    per = profile["per_workers"]
    by = {(r["workers"], r["mode"]): r for r in bench["records"]}
    action: dict[str, float] = {}
    # the DFA stages' per-op time: from the one-worker run of the smallest depth, used for every depth
    one = sorted((int(m.rsplit("D", 1)[1]), m) for n, m in by if n == 1 and m.startswith("dataplane-D"))
    dataplane = one[0][1] if one else None
    for (n, mode), rec in by.items():
        if n == 1 and "1" in per and (mode.startswith(("gpipe-M", "1f1b-M", "ddp")) or mode == dataplane):
            action[mode] = _per_action(mode, per["1"], rec["samples_per_s"], batch, classes,
                                       links.Interconnect(**profile["links"]["gloo"]), cores)
    messages = message_costs(profile, batch, classes, cores)
    rows = []
    for (n, mode), rec in by.items():
        if not mode.startswith(("dataplane-", "gpipe-M", "1f1b-M", "ddp")):
            continue
        prof = per[str(n)]
        wire = (prof.get("transport", "gloo") if n > 1 else "none") if mode.startswith("dataplane-D") else "gloo"
        if GRID.fullmatch(mode):  # on one node the stages and the replicas' sums go over shared memory
            wire = "shm" if "shm" in profile["links"] else "gloo"
        link = links.Interconnect(**profile["links"]["gloo" if wire == "none" else wire])
        if (n, mode) in messages:
            link = replace(link, per_message_s=link.per_message_s + messages[n, mode])
        soft = action.get(dataplane if mode.startswith("dataplane") else mode, 0.0)
        pred = predict_mode(mode, prof, batch, classes, link, contention_of(prof, n, cores), cores, soft)
        err = pred / rec["samples_per_s"] - 1
        fitted = n == 1 and mode in action
        rounds = rec.get("rounds") or []
        spread = max(rounds) / min(rounds) - 1 if len(rounds) > 1 and min(rounds) > 0 else None
        rows.append({"workers": n, "mode": mode, "link": wire, "measured": rec["samples_per_s"],
                     "spread": spread, "predicted": pred, "error": err, "calibration": fitted,
                     "within": fitted or abs(err) <= tolerance})
    rows.sort(key=lambda r: (r["workers"], r["mode"]))
    checked = [r for r in rows if not r["calibration"]]
    lines = warnings(profile) + [f"Simulator against the bench in {folder} ({profile.get('cpu', '')}, {cores} CPUs); tolerance "
             f"{tolerance:.0%}: {sum(r['within'] for r in checked)} of {len(checked)} predictions within", "",
             tables.markdown(["N", "mode", "link", "measured samples/s", "its rounds apart", "predicted", "error",
                              "within"],
                             [[r["workers"], r["mode"], r["link"], f"{r['measured']:.0f}",
                               None if r["spread"] is None else format(r["spread"], ".0%"), f"{r['predicted']:.0f}",
                               f"{r['error']:+.1%}", "calibration" if r["calibration"] else "yes" if r["within"]
                               else "**no**"] for r in rows], "rllrrrrl")]
    noisy = [r for r in checked if r["spread"] is not None and r["spread"] > tolerance]
    if noisy:  # a prediction cannot be checked more finely than the measurement repeats
        names = ", ".join(f"N={r['workers']} {r['mode']}" for r in noisy)
        lines += ["", f"Measured in rounds further apart than the tolerance: {len(noisy)} of {len(checked)} ({names})"]
    if action:
        lines += ["", "Calibrated software time per pipeline action of a block, DDP step or DFA op: " +
                  ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in sorted(action.items()))]
    if messages:
        lines += ["", "Time per message beyond the ping-pong, fitted on the tiny model's runs: " +
                  ", ".join(f"{m} N={n} {v * 1e3:.2f} ms" for (n, m), v in sorted(messages.items()))]
    return rows, "\n".join(lines)


def scaling(folder: Path, link_name: str, workers: list[int], depth: int, microbatches: int,
            replicas: list[int] = (1,)) -> str:
    """Predicted samples/s for each N of the bench's model family (N equal hidden blocks and the head, or
    its fixed model split into N stages), from the costs of the largest N it profiled. `replicas`: also a
    table of each N as every grid of N / R stages x R replicas (R in `replicas`), beside N stages and DDP."""

    bench, profile = _load(folder)
    per = profile["per_workers"]
    largest = per[max(per, key=int)]
    blocks = largest["blocks"]
    fixed = profile.get("fixed_blocks")
    link = links.get(link_name, profile["links"].get("shm") or profile["links"].get("gloo"))
    cores = profile.get("cpus", 1)
    batch, classes = profile["batch"], profile["classes"]
    lines = warnings(profile) + [f"Predicted samples/s, link {link_name} ({link.bandwidth / 1e9:.1f} GB/s, {link.latency_s * 1e6:.0f} us); "
             f"costs from {folder} (N = {max(per, key=int)})", ""]
    rows, grids = [], []
    for n in workers:
        if fixed:
            model, sizes = blocks, partition.even(fixed, n)
        else:
            model, sizes = [blocks[0]] * n + [blocks[-1]], partition.even(n, n)
        if link_name == "measured":  # workers share this machine's cores and caches
            known = {int(k): contention_of(v, int(k), cores) for k, v in per.items()}
            args = (known.get(n) or known[min(known, key=lambda k: abs(k - n))], cores)
        else:
            args = (1.0, float("inf"))  # a device per worker
        prof = {"blocks": model, "partition": sizes}
        row = [predict_mode(f"dataplane-D{depth}", prof, batch, classes, link, *args)]
        for kind in ("gpipe", "1f1b"):
            row.append(predict_mode(f"{kind}-M{microbatches}", prof, batch, classes, link, *args)
                       if batch % microbatches == 0 and (kind == "gpipe" or microbatches >= n) else float("nan"))
        row.append(predict_mode("ddp", prof, batch, classes, link, *args) if batch % n == 0 else float("nan"))
        rows.append([n] + [f"{v:.0f}" if v == v else None for v in row])
        for r in sorted(set(replicas) - {1}):
            if n % r == 0 and n // r <= len(model) - 1:
                d = depth if n // r > 1 else 1
                pred = predict_mode(f"dataplane-{n // r}x{r}-D{d}", prof, batch, classes, link, *args)
                grids.append([n, f"{n // r} x {r}", d] + [f"{v:.0f}" if v == v else None for v in (pred, row[0], row[-1])])
    lines.append(tables.markdown(["N", f"dfa D={depth}", f"gpipe M={microbatches}", f"1f1b M={microbatches}", "ddp"],
                                 rows, "rrrrr"))
    if grids:
        lines += ["", "The same N workers as S stages x R replicas (runtime.replicas), beside N stages x 1 and DDP "
                  "(samples/s):", "",
                  tables.markdown(["N", "stages x replicas", "D", "dfa grid", f"dfa N x 1, D={depth}", "ddp"],
                                  grids, "rlrrrr")]
    return "\n".join(lines)
