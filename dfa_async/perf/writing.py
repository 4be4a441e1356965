"""What a bench writes: bench.json, bench.md and profile.json (each replaced whole), and the scaling plot."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .. import tables


def save(out: Path, records: list[dict], meta: dict, table: str, profiles: dict | None, wires: dict,
         batch: int, threads: int, fixed_blocks: int | None, tiny: dict | None = None) -> None:
    """bench.json, bench.md and (CPU workers) the simulator's profile.json, each replaced atomically."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"bench.json": json.dumps({"meta": meta, "records": records}, indent=2), "bench.md": table + "\n"}
    if profiles is not None:
        files["profile.json"] = json.dumps({
            "batch": batch, "classes": 10, "threads": threads, "cpus": os.cpu_count(), "cpu": meta["cpu"],
            "fixed_blocks": fixed_blocks, "links": wires, "per_workers": profiles,
            **({"tiny": tiny} if tiny else {})}, indent=1)
    for name, text in files.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def plot(records: list[dict], meta: dict, path: Path) -> None:
    """Samples/s against N, one line per mode (modes measured at more than one N)."""
    try:
        import matplotlib
    except ImportError:  # e.g. a bare GPU image running examples/device_check.sh: the JSON has it all
        print(f"{path.name} not drawn: matplotlib is not installed", flush=True)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by: dict[str, list] = {}
    for r in records:
        key = r["mode"] if not r["mode"].startswith(("backprop-threads", "reference-dfa-threads")) \
            else r["mode"].rstrip("0123456789") + "N"
        by.setdefault(key, []).append((r["workers"], r["samples_per_s"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # more modes than the default cycle's 10 colours
    for mode, pts in sorted(by.items()):
        if len(pts) > 1 or mode in ("reference-dfa", "backprop-fused-opt"):
            xs, ys = zip(*sorted(pts))
            ax.plot(xs, ys, marker="o", label=mode)
    ax.set_xlabel("workers N")
    ax.set_ylabel("samples/s")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    model = f"{meta['fixed_blocks']} blocks" if meta.get("fixed_blocks") else "N blocks"
    ax.set_title(f"{model} x {meta['width']} wide, batch {meta['batch']}; {meta['cpus']} CPUs")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(records: list[dict], meta: dict) -> str:
    model = f"{meta['fixed_blocks']} blocks split into N stages" if meta.get("fixed_blocks") else "N blocks on N stages"
    gpt = meta.get("gpt")
    kind = (f"a GPT of {gpt['n_layer']} layers ({gpt['n_embd']} wide, {gpt['n_head']} heads, context "
            f"{gpt['block_size']}) on random tokens" if gpt else f"{meta['width']}-wide tanh blocks")
    lines = [f"{model}, {kind}, batch {meta['batch']}, {meta['threads']} thread(s) per "
             f"worker, {meta['steps']} timed steps, best of {meta['repeats']} rounds; {meta['cpu']} ({meta['cpus']} CPUs)",
             ""]
    rows = [[r["workers"], r["mode"], f"{r['steps_per_s']:.1f}", f"{r['samples_per_s']:.0f}", f"{r['ms_per_step']:.3f}",
             f"{r['speedup']:.2f}x", f"{r['efficiency']:.2f}", f"{r['vs_reference_dfa']:.2f}x", f"{r['vs_ceiling']:.2f}x",
             ", ".join(f"{b:.2f}" for b in r["busy_fraction"]) if r.get("busy_fraction") else ""] for r in records]
    lines += [tables.markdown(["N", "mode", "steps/s", "samples/s", "ms/step", "speedup", "efficiency",
                               "vs reference DFA", "vs ceiling", "busy"], rows, "rlrrrrrrrl"), ""]
    for n, m in meta["per_workers"].items():
        if "too_small" in m:
            lines.append(f"Warning: {m['too_small']}")
        lines.append(f"N = {n}: single-process DFA step time / backprop step time, timed in alternating chunks: "
                     f"{m['dfa_step_over_backprop_step']:.3f} (same optimizer call), "
                     f"{m['dfa_step_over_plain_backprop_step']:.3f} (plain PyTorch backprop)")
        if "dataplane_over_reference_paired" in m:
            p = m["dataplane_over_reference_paired"]
            lines.append(f"N = {n}: data plane at D = {p['depth']} over single-process DFA, timed in alternating "
                         f"chunks: {p['speedup']:.3f}x (chunks {min(p['chunks']):.2f}-{max(p['chunks']):.2f}; "
                         f"{p['dataplane_steps_per_s']:.1f} against {p['reference_steps_per_s']:.1f} steps/s)")
    return "\n".join(lines)
