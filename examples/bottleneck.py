"""The bottleneck effect of Launay, Poli & Krzakala 2019 (arXiv 1906.04554, section 4): the middle
800-wide layer of the FC net 3072-800-800-800-10 restricted to b units, by the paper's update mask
(`bottleneck.form = elements`: each entry of the layer's weights and bias trained with probability
b/800) and by a truly narrow layer (`narrow`), trained with DFA on the Ray trainer (D = 2). Its claim:
alignment keeps narrow layers from learning, so the restricted layer's alignment falls as b shrinks.

    python examples/bottleneck.py --budget smoke --out bottleneck     # minutes on 2 cores (CI)
    python examples/bottleneck.py --budget cpu --out docs/paper/bottleneck
    python examples/bottleneck.py --budget paper --out bottleneck --runs s3://bucket/bottleneck \
        --submit http://head:8265 --jobs 16 --set runtime.device=cuda  # CIFAR-10, 50 epochs: Ray jobs

Each cell runs as its own process (examples/grid.py), resumable. Writes OUT/results.csv,
OUT/summary.md and OUT/bottleneck.png (alignment of the restricted layer and its neighbours, and
test error, against b)."""
from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

import grid
from dfa_async.storage import remote

B_PAPER = [1, 3, 5, 8, 11, 18, 28, 46, 73, 118, 191, 308, 496, 800]
PAPER = grid.PAPER + ["bottleneck.block=1", "feedback.rule=dfa"]
# budget -> (data, width, b values, epochs, seeds, train samples (0: all), runtime settings)
BUDGETS = {
    "smoke": ("mnist", 64, [1, 8, 64], 1, 1, 1280, ["runtime.backend=local"]),
    "cpu": ("mnist", 800, B_PAPER, 5, 2, 0, ["runtime.backend=ray", "runtime.depth=2", "runtime.blocks_per_stage=auto"]),
    "paper": ("cifar10", 800, B_PAPER, 50, 3, 0, ["runtime.backend=ray", "runtime.depth=2"]),
}


def cells(budget: str, seeds: int | None, epochs: int | None = None):
    data, width, bs, budget_epochs, n_seeds, limit, runtime = BUDGETS[budget]
    epochs = epochs or budget_epochs
    n_train = limit or (60000 if data == "mnist" else 50000)
    for form in ("elements", "narrow"):
        for b in bs:
            for seed in range(seeds or n_seeds):
                sets = [f"data.name={data}", "model.kind=mlp", f"model.widths=[{width}, {width}, {width}]", *PAPER,
                        f"bottleneck.form={form}", f"bottleneck.width={b}", f"train.epochs={epochs}",
                        f"train.seed={seed}", f"alignment.every={max(1, n_train // 128)}", *runtime]
                if limit:
                    sets += [f"data.limit_train={limit}", "data.limit_test=500"]
                yield {"form": form, "b": b, "seed": seed, "name": f"{data}.{form}.b{b}.s{seed}", "sets": sets,
                       "ray": "runtime.backend=ray" in runtime}


def main(argv=None) -> int:
    args = grid.arguments(__doc__, BUDGETS, "bottleneck", argv)
    out = Path(args.out)
    todo, rows = list(cells(args.budget, args.seeds, args.epochs)), []
    failed = grid.run_all(todo, args)
    for cell in todo:
        got = grid.outcome(remote.join(args.runs, cell["name"]))
        if got and got["alignment"]:
            final = got["alignment"][-1][1]
            rows.append({"form": cell["form"], "b": cell["b"], "seed": cell["seed"],
                         "test_error": got["test_error"], "align0": final[0], "align1": final[1],
                         "align2": final[2]})
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["form", "b", "seed", "test_error", "align0", "align1", "align2"])
        w.writeheader()
        w.writerows(rows)
    text = summarize(rows, grid.command("bottleneck.py", args))
    (out / "summary.md").write_text(text)
    print(text)
    plot(rows, out / "bottleneck.png")
    return 1 if failed else 0


def mean(rows, key):
    return statistics.mean(r[key] for r in rows)


def summarize(rows: list[dict], command: str) -> str:
    lines = ["# Bottleneck (Launay et al. 2019, section 4)", "", f"Command: `{command}`", "",
             "Final mean cosine of each block's signal with its true gradient (held-out batch, eval mode); "
             "block 1 is the restricted one. Means over seeds (n).", "",
             "| form | b | n | test error % | align block 0 | align block 1 (restricted) | align block 2 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for form in ("elements", "narrow"):
        for b in sorted({r["b"] for r in rows if r["form"] == form}):
            mine = [r for r in rows if r["form"] == form and r["b"] == b]
            lines.append(f"| {form} | {b} | {len(mine)} | {mean(mine, 'test_error'):.2f} | {mean(mine, 'align0'):.3f} | "
                         f"{mean(mine, 'align1'):.3f} | {mean(mine, 'align2'):.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for form, style in (("elements", "-"), ("narrow", "--")):
        mine = [r for r in rows if r["form"] == form]
        bs = sorted({r["b"] for r in mine})
        if not bs:
            continue
        at = lambda key: [mean([r for r in mine if r["b"] == b], key) for b in bs]  # noqa: E731
        for key, label in (("align1", "restricted (block 1)"), ("align0", "block 0"), ("align2", "block 2")):
            a1.plot(bs, at(key), style, marker="o", label=f"{form}: {label}")
        a2.plot(bs, at("test_error"), style, marker="o", label=form)
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.set_xlabel("b (units of the restricted layer)")
    a1.set_ylabel("alignment cos(B e, dL/dh)")
    a2.set_ylabel("test error %")
    a1.legend(fontsize=7)
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
