"""`dfa-async report RUN_DIR`: plots and tables drawn from a run's event log alone."""
from __future__ import annotations

import math
import sys
from pathlib import Path

from . import runlog, storage
from .config.schema import TEXT
from .tables import markdown


def load(run_dir: Path) -> dict[str, list[dict]]:
    path = Path(run_dir) / "events.msgpack"
    if not path.is_file():
        raise ValueError(f"RUN_DIR: {path} is not a file; pass a run directory written by dfa-async train")
    data = path.read_bytes()
    found = runlog.scan(data)
    if not found.records:
        raise ValueError(f"RUN_DIR: {path} holds no event-log records ({len(data)} bytes); pass a run directory "
                         "written by dfa-async train")
    for problem in found.problems(path):
        print(f"dfa-async: warning: {problem}", file=sys.stderr)
    if found.tail is not None:
        print(f"dfa-async: warning: {path}: the last {len(data) - found.tail} bytes are a torn record (a run cut "
              "off mid-write); the report covers what precedes them", file=sys.stderr)
    out: dict[str, list[dict]] = {}
    foreign = 0
    for rec in found.records:
        if not isinstance(rec, dict) or not isinstance(rec.get("kind"), str):
            foreign += 1  # intact framing around a record dfa-async did not write
            continue
        out.setdefault(rec["kind"], []).append(rec)
    if foreign:
        print(f"dfa-async: warning: {path}: {foreign} record(s) without a kind passed over", file=sys.stderr)
    return out


def is_text(ev: dict[str, list[dict]]) -> bool:
    """A language model's run (its test set is validation windows, measured per token): its log records
    a vocabulary (runs before that record: their data was a text)."""
    return any("vocab" in r or r.get("config", {}).get("data", {}).get("name") in TEXT for r in ev.get("config", []))


def label(ev: dict[str, list[dict]], fallback: str) -> str:
    """A run's name on a shared plot: its rule (and depth), from its settings."""
    cfg = next((r["config"] for r in ev.get("config", []) if "config" in r), None)
    if not cfg:
        return fallback
    rt = cfg["runtime"]
    rule = cfg["feedback"]["rule"]
    return f"{rule} ({rt['backend']}, D={rt['depth']})" if rule != "bp" else f"bp ({rt['backend']})"


def tables(ev: dict[str, list[dict]]) -> str:
    lines = ["# Run report", ""]
    done = (ev.get("done") or [None])[-1]
    if done and is_text(ev):
        lines += [markdown(["steps", "validation loss (nats/token)", "bits/token", "token accuracy", "seconds",
                            "windows/s", "restarts"],
                           [[done["step"], f"{done['test_loss']:.4f}", f"{done['test_loss'] / math.log(2):.4f}",
                             f"{done['test_accuracy']:.4f}", f"{done['seconds']:.1f}", f"{done['samples_per_s']:.0f}",
                             done.get("restarts", 0)]], "rrrrrrr"), ""]
    elif done:
        lines += [markdown(["steps", "test accuracy", "test loss", "seconds", "samples/s", "restarts"],
                           [[done["step"], f"{done['test_accuracy']:.4f}", f"{done['test_loss']:.4f}",
                             f"{done['seconds']:.1f}", f"{done['samples_per_s']:.0f}", done.get("restarts", 0)]],
                           "rrrrrr"), ""]
    else:
        lines += ["The run has not finished (no `done` record).", ""]
    if ev.get("eval") and is_text(ev):
        lines += ["## Validation", "", markdown(["step", "seconds", "validation loss", "token accuracy"], [
            [r["step"] + 1, f"{r['seconds']:.1f}" if "seconds" in r else None, f"{r['test_loss']:.4f}",
             f"{r['test_accuracy']:.4f}"] for r in ev["eval"]], "rrrr"), ""]
    elif ev.get("eval"):
        lines += ["## Evaluation", "", markdown(["epoch", "test accuracy", "test loss"], [
            [f"{r['epoch']:g}", f"{r['test_accuracy']:.4f}", f"{r['test_loss']:.4f}"] for r in ev["eval"]], "rrr"), ""]
    if ev.get("align"):
        # Blocks numbered from 0, as in every record and plot.
        blocks = [b["block"] for b in ev["align"][0]["blocks"]]
        columns = ["step"] + [c for k in blocks for c in (f"block {k} signal cosine", f"block {k} update angle")]
        rows = [[r["step"]] + [c for b in r["blocks"] for c in (f"{b['cos_mean']:.3f} ± {b['cos_std']:.3f}",
                                                                 f"{b['update_angle']:.1f}°")] for r in ev["align"]]
        lines += ["## Alignment", "", "Signal cosine: between the block's DFA signal B e and the backprop gradient "
                  "at its output, per sample (mean ± std; 1 is aligned). Update angle: between the block's DFA and "
                  "backprop weight updates, in degrees (0 is aligned).", "",
                  markdown(columns, rows, "r" * len(columns)), ""]
    if ev.get("stage"):
        lines += ["## Stages", "", markdown(["stage", "busy s", "span s", "idle fraction"], [
            [actor(r), f"{r['busy_s']:.2f}", f"{r['span_s']:.2f}", f"{r['idle_fraction']:.3f}"]
            for r in ev["stage"]], "rrrr"), ""]
    return "\n".join(lines)


def plots(ev: dict[str, list[dict]], out: Path, others: dict[str, dict] | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, fig in figures(ev, plt, others).items():
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)
    return written


def figures(ev: dict[str, list[dict]], plt, others: dict[str, dict] | None = None) -> dict[str, object]:
    """Each plot the log has data for, by file name, laid out (tight) and not yet saved. `others`: the
    logs of runs to draw beside this one on the validation-loss axes (by name)."""
    figs = {}
    if ev.get("eval") and is_text(ev):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for name, log in {label(ev, "this run"): ev, **(others or {})}.items():
            evals = [r for r in log.get("eval", []) if "seconds" in r]
            a1.plot([r["step"] + 1 for r in evals], [r["test_loss"] for r in evals], marker="o", label=name)
            a2.plot([r["seconds"] for r in evals], [r["test_loss"] for r in evals], marker="o", label=name)
        a1.set(xlabel="step", ylabel="validation loss (nats/token)", title="Validation loss against steps")
        a2.set(xlabel="training wall time (s)", ylabel="validation loss (nats/token)",
               title="Validation loss against time")
        a1.legend(fontsize=8)
        a2.legend(fontsize=8)
        figs["val_loss.png"] = fig
    if ev.get("train"):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["step"] for r in ev["train"]], [r["loss"] for r in ev["train"]], lw=0.8)
        ax.set(xlabel="step", ylabel="training loss", yscale="log", title="Training loss")
        figs["loss.png"] = fig
    if ev.get("eval") and not is_text(ev):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["epoch"] for r in ev["eval"]], [100 * (1 - r["test_accuracy"]) for r in ev["eval"]], marker="o")
        ax.set(xlabel="epoch", ylabel="test error (%)", title="Test error")
        figs["test_error.png"] = fig
    if ev.get("align"):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        steps = [r["step"] for r in ev["align"]]
        for i, b in enumerate(ev["align"][0]["blocks"]):
            cos = [r["blocks"][i]["cos_mean"] for r in ev["align"]]
            std = [r["blocks"][i]["cos_std"] for r in ev["align"]]
            a1.errorbar(steps, cos, yerr=std, label=f"block {b['block']}", capsize=2)
            a2.plot(steps, [r["blocks"][i]["update_angle"] for r in ev["align"]], label=f"block {b['block']}")
        a1.set(xlabel="step", ylabel="cosine of B e and dL/dh (per sample)", title="Signal alignment (cosine)")
        a2.set(xlabel="step", ylabel="angle (degrees)", title="DFA against BP update (angle)")
        a1.legend(fontsize=8)
        a2.legend(fontsize=8)
        figs["alignment.png"] = fig
    if ev.get("timeline"):
        figs.update(timeline_figures(ev["timeline"], plt))
    for fig in figs.values():
        fig.tight_layout()
    return figs


def clipped(fig) -> bool:
    """Whether anything drawn on `fig` (titles, labels, ticks, legends) reaches beyond its edges."""
    drawn = fig.get_tightbbox(fig.canvas.get_renderer())  # in inches, of what is drawn only
    width, height = fig.get_size_inches()
    return drawn.x0 < -0.01 or drawn.y0 < -0.01 or drawn.x1 > width + 0.01 or drawn.y1 > height + 0.01


def actor(record: dict) -> str:
    """A stage actor's name in tables and plots: its stage, and its replica where there are replicas."""
    return f"{record['stage']}" + (f" r{record['replica']}" if "replica" in record else "")


GANTT_STEPS = 24  # steps of one window drawn: enough to show the pipeline's steady state, few enough to read


def gantt(records: list[dict]) -> tuple[int, dict[str, dict[str, list[tuple[float, float]]]]]:
    """The first step drawn and, per stage actor (`actor`: one row per stage and replica) and op, (start ms,
    duration ms) bars over the first GANTT_STEPS steps of the last window that every actor logged, from that
    window's first op. Times are each actor's host clock: exact on one node, skewed by the clocks' offset
    across nodes."""
    windows: dict[int, dict[tuple, dict]] = {}
    for r in records:
        windows.setdefault(r["step"], {})[r.get("replica", 0), r["stage"]] = r
    stages = max(len(w) for w in windows.values())
    window = windows[max(k for k, w in windows.items() if len(w) == stages)]
    first = min(min(r["steps"]) for r in window.values())
    t0 = min(r["start"][0] for r in window.values())
    bars = {actor(r): {op: [(1e3 * (a - t0), 1e3 * (b - a)) for o, t, a, b in zip(r["op"], r["steps"], r["start"],
                                                                                 r["end"])
                            if o == op and t < first + GANTT_STEPS] for op in ("forward", "update")}
            for _, r in sorted(window.items())}
    return first, bars


def staleness_counts(records: list[dict]) -> dict[int, int]:
    """How many updates of the run saw each staleness."""
    out: dict[int, int] = {}
    for r in records:
        for o, k in zip(r["op"], r["staleness"]):
            if o == "update":
                out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items()))


def timeline_figures(records: list[dict], plt) -> dict[str, object]:
    """A Gantt chart of every stage's forward/update/idle (gaps) and the staleness histogram."""
    first, bars = gantt(records)
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(bars) + 1.6))
    colors = {"forward": "tab:blue", "update": "tab:orange"}
    for row, ops in enumerate(bars.values()):
        for op, color in colors.items():
            ax.broken_barh(ops[op], (row - 0.4, 0.8), color=color, label=op if row == 0 else None)
    replicas = any(" r" in name for name in bars)
    ax.set(xlabel="ms since the window's first op (gaps: idle)", ylabel="stage, replica" if replicas else "stage",
           yticks=range(len(bars)), yticklabels=list(bars),
           title=f"Pipeline timeline: steps {first}-{first + GANTT_STEPS - 1}")
    ax.invert_yaxis()
    ax.legend(loc="upper right", fontsize=8)
    figs = {"timeline.png": fig}
    counts = staleness_counts(records)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(list(counts), list(counts.values()), width=0.8)
    ax.set(xlabel="staleness: updates applied between\na step's forward and its update", ylabel="updates",
           title="Staleness", xticks=list(counts))
    figs["staleness.png"] = fig
    return figs


def write(run_dir: str | Path, out: str | Path | None = None, against=()) -> Path | str:
    """Write `report.md` and its plots into `out` (default RUN_DIR/report); return the Markdown path.
    RUN_DIR may be a URI (see storage): the default report is then written back under it. `against`: other
    runs' directories, drawn beside this one on the validation-loss plot (e.g. DFA against backprop)."""
    if storage.is_uri(run_dir):
        store = storage.open_run(run_dir)
        try:
            written = write(store.local, out, against)
        except BaseException:
            store.discard()
            raise
        store.close()
        return written if out else f"{store.name.rstrip('/')}/report/report.md"
    ev = load(Path(run_dir))
    out = Path(out) if out else Path(run_dir) / "report"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file; give a folder for report.md and its plots")
    others = {}
    for other in against:
        log = load(Path(other))
        others[f"{label(log, Path(other).name)}: {Path(other).name}"] = log
    out.mkdir(parents=True, exist_ok=True)
    images = plots(ev, out, others)
    md = tables(ev) + "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in images) + "\n"
    (out / "report.md").write_text(md)
    return out / "report.md"
