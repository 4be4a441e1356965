"""One hop's cost for stages that share a GPU, against the compute it feeds: the hop as the data plane now
makes it (`plane.to_wire(t, "pinned")`: an asynchronous copy into pinned host memory, then an
asynchronous copy back to the device), the pageable path it replaced (`t.cpu()`, then `.to(device)`), and a
device-to-device copy (what CUDA IPC between the stages would cost at best), each beside one DFA step of a
square tanh block of that size (forward, then backward of a projected error inside the block).

    python examples/gpu_transfer.py --out DIR      # prints a table, writes DIR/transfer.json

Medians of --repeats timed runs after --warmup, each closed by a device sync. Without CUDA it says so and
writes a record that says why nothing was measured."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from dfa_async.runtime.plane import to_wire

SIZES = [(256, 1024), (1024, 4096), (4096, 8192)]


def timed(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(batch: int, width: int, warmup: int, repeats: int) -> dict:
    dev = torch.device("cuda", torch.cuda.current_device())
    t = torch.randn(batch, width, device=dev)
    spare = torch.empty_like(t)
    block = torch.nn.Linear(width, width, device=dev)
    B = torch.randn(10, width, device=dev) / width ** 0.5
    e = torch.randn(batch, 10, device=dev)

    def step():
        h = torch.tanh(block(t))
        h.backward(e @ B)

    return {
        "batch": batch, "width": width, "mbytes": t.numel() * 4 / 1e6,
        "pageable_s": timed(lambda: t.cpu().to(dev), warmup, repeats),
        "pinned_s": timed(lambda: to_wire(t, "pinned").to(dev, non_blocking=True), warmup, repeats),
        "device_s": timed(lambda: spare.copy_(t), warmup, repeats),
        "block_step_s": timed(step, warmup, repeats),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="transfer-results")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("gpu_transfer: no CUDA device here; nothing measured")
        (out / "transfer.json").write_text(json.dumps({"skipped": "no CUDA device"}) + "\n")
        return 0
    rows = [measure(b, w, args.warmup, args.repeats) for b, w in SIZES]
    meta = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    (out / "transfer.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"{'batch x width':>14} {'MB':>6} {'pageable':>10} {'pinned':>10} {'device':>10} {'block step':>11}")
    for r in rows:
        print(f"{r['batch']:>6} x {r['width']:<6} {r['mbytes']:>6.1f} " + " ".join(
            f"{r[k] * 1e3:>8.3f}ms" for k in ("pageable_s", "pinned_s", "device_s", "block_step_s")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
