"""`dfa-async simulate`: predicted samples/s of the asynchronous DFA pipeline, GPipe, 1F1B and DDP for N
workers, from a profile written by `dfa-async bench` (per-block costs, activation sizes, the measured
link and compute slowdown of this machine), and its check against the bench's own measurements."""
from __future__ import annotations

import json
from pathlib import Path

from . import links
from .predict import ddp, dfa, pipeline

__all__ = ["predict_mode", "validate", "scaling", "links"]


def predict_mode(mode: str, prof: dict, batch: int, classes: int, link: links.Link, slowdown: float) -> float:
    """Samples/s of one bench mode (dataplane-D{d}, gpipe-M{m}, 1f1b-M{m}, ddp) on prof's partition."""
    blocks, sizes = prof["blocks"], prof["partition"]
    if mode.startswith("dataplane-D"):
        return dfa(blocks, sizes, batch, classes, link, int(mode.rsplit("D", 1)[1]), slowdown)
    if mode.startswith(("gpipe-M", "1f1b-M")):
        kind, m = mode.split("-M")
        return pipeline(kind, blocks, sizes, batch, link, int(m), slowdown)
    if mode == "ddp":
        return ddp(blocks, len(sizes), batch, link, slowdown)
    raise ValueError(f"mode: {mode!r} is not simulated (dataplane-D*, gpipe-M*, 1f1b-M*, ddp)")


def _load(folder: Path) -> tuple[dict, dict]:
    folder = Path(folder)
    for name in ("bench.json", "profile.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"--profile: {folder / name} does not exist; pass the --out folder of "
                                    "`dfa-async bench`")
    return json.loads((folder / "bench.json").read_text()), json.loads((folder / "profile.json").read_text())


def validate(folder: Path, tolerance: float = 0.15) -> tuple[list[dict], str]:
    """Every simulated mode the bench measured in `folder`: measured and predicted samples/s, error."""
    bench, profile = _load(folder)
    batch, classes = profile["batch"], profile["classes"]
    rows = []
    for rec in bench["records"]:
        n = str(rec["workers"])
        mode = rec["mode"]
        if not mode.startswith(("dataplane-D", "gpipe-M", "1f1b-M", "ddp")):
            continue
        prof = profile["per_workers"][n]
        wire = prof.get("transport", "gloo") if mode.startswith("dataplane") else "gloo"
        link = links.Link(**profile["links"][wire])
        pred = predict_mode(mode, prof, batch, classes, link, prof["slowdown"])
        err = pred / rec["samples_per_s"] - 1
        rows.append({"workers": rec["workers"], "mode": mode, "link": wire, "measured": rec["samples_per_s"],
                     "predicted": pred, "error": err, "within": abs(err) <= tolerance})
    lines = [f"Simulator against the bench in {folder} ({profile.get('cpu', '')}); tolerance {tolerance:.0%}", "",
             "| N | mode | link | measured samples/s | predicted | error | within |",
             "|---:|---|---|---:|---:|---:|---|"]
    lines += [f"| {r['workers']} | {r['mode']} | {r['link']} | {r['measured']:.0f} | {r['predicted']:.0f} | "
              f"{r['error']:+.1%} | {'yes' if r['within'] else '**no**'} |" for r in rows]
    return rows, "\n".join(lines)


def scaling(folder: Path, link_name: str, workers: list[int], depth: int, microbatches: int) -> str:
    """Predicted samples/s for each N of the bench's model family (N equal hidden blocks and the head, or
    its fixed model split into N stages), from the costs of the largest N it profiled."""
    from ..perf.bench import split

    bench, profile = _load(folder)
    per = profile["per_workers"]
    largest = per[max(per, key=int)]
    blocks = largest["blocks"]
    fixed = profile.get("fixed_blocks")
    link = links.get(link_name, profile["links"].get("shm") or profile["links"].get("gloo"))
    cores = profile.get("cpus", 1)
    batch, classes = profile["batch"], profile["classes"]
    lines = [f"Predicted samples/s, link {link_name} ({link.bandwidth / 1e9:.1f} GB/s, {link.latency_s * 1e6:.0f} us); "
             f"costs from {folder} (N = {max(per, key=int)})", "",
             f"| N | dfa D={depth} | gpipe M={microbatches} | 1f1b M={microbatches} | ddp |", "|---:|---:|---:|---:|---:|"]
    for n in workers:
        if fixed:
            model, sizes = blocks, split(fixed, n)
        else:
            model, sizes = [blocks[0]] * n + [blocks[-1]], split(n, n)
        if link_name == "measured":  # workers share this machine's cores
            known = {int(k): v["slowdown"] for k, v in per.items()}
            slow = known.get(n) or max(1.0, n / cores) * known[min(known, key=lambda k: abs(k - min(n, cores)))]
        else:
            slow = 1.0  # a device per worker
        prof = {"blocks": model, "partition": sizes}
        row = [predict_mode(f"dataplane-D{depth}", prof, batch, classes, link, slow)]
        for kind in ("gpipe", "1f1b"):
            row.append(predict_mode(f"{kind}-M{microbatches}", prof, batch, classes, link, slow)
                       if batch % microbatches == 0 and (kind == "gpipe" or microbatches >= n) else float("nan"))
        row.append(predict_mode("ddp", prof, batch, classes, link, slow) if batch % n == 0 else float("nan"))
        lines.append(f"| {n} | " + " | ".join(f"{v:.0f}" if v == v else "-" for v in row) + " |")
    return "\n".join(lines)
