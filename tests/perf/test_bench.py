"""The benchmark program runs every mode side by side and writes its JSON and Markdown (no timing
assertions: speed is reported, not tested)."""
import json
import os
import subprocess
import sys
import time

import pytest

from dfa_async.perf import bench, machine, modes


def test_bench_writes_one_record_per_mode(tiny_bench):
    every, tmp_path = tiny_bench
    records = [r for r in every if r["workers"] == 2]
    assert [r["mode"] for r in records] == ["pytorch-backprop", "backprop-fused-opt", "reference-dfa",
                                               "backprop-threads2", "reference-dfa-threads2",
                                               "ceiling-independent-stages", "dataplane-D2", "dataplane-1x2-D1",
                                               "gpipe-M2", "1f1b-M2", "ddp"]
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["records"] == every and saved["meta"]["width"] == 16 and saved["meta"]["cpu"]
    by = {r["mode"]: r for r in records}
    assert all(r["steps_per_s"] > 0 and r["samples_per_s"] == pytest.approx(8 * r["steps_per_s"]) for r in records)
    assert by["reference-dfa"]["vs_reference_dfa"] == 1.0 and by["ceiling-independent-stages"]["vs_ceiling"] == 1.0
    for mode in ("dataplane-D2",):
        r = by[mode]
        assert r["depth"] == 2 and len(r["busy_fraction"]) == 2 and all(0 < b <= 1 for b in r["busy_fraction"])
        assert r["rounds"] == [round(r["steps_per_s"], 2)]
        assert r["overhead_ms_per_step"] == pytest.approx(r["ms_per_step"] - by["ceiling-independent-stages"]["ms_per_step"])
    # the step ratio is timed in alternating chunks of 12 // 8 = 1 step, 12 of them: the whole is their weighted mean
    meta = saved["meta"]["per_workers"]["2"]
    chunks = meta["dfa_step_over_backprop_step_chunks"]
    assert len(chunks) == 12 and all(c > 0 for c in chunks)
    assert min(chunks) - 1e-3 <= meta["dfa_step_over_backprop_step"] <= max(chunks) + 1e-3
    assert meta["dfa_step_over_plain_backprop_step"] > 0
    # the best depth (the only one here) against the reference, paired in time: 12 // 6 = 2-step chunks
    paired = meta["dataplane_over_reference_paired"]
    assert paired["depth"] == 2 and len(paired["chunks"]) == 6 and all(c > 0 for c in paired["chunks"])
    assert min(paired["chunks"]) - 1e-3 <= paired["speedup"] <= max(paired["chunks"]) + 1e-3
    assert paired["speedup"] == pytest.approx(paired["dataplane_steps_per_s"] / paired["reference_steps_per_s"])
    assert f"data plane at D = 2 over single-process DFA, timed in alternating chunks: {paired['speedup']:.3f}x" \
        in (tmp_path / "bench.md").read_text()
    assert "timed in alternating chunks" in (tmp_path / "bench.md").read_text()
    assert "| 2 | dataplane-D2 |" in (tmp_path / "bench.md").read_text()
    assert by["gpipe-M2"]["speedup"] == pytest.approx(by["gpipe-M2"]["steps_per_s"] / by["backprop-fused-opt"]["steps_per_s"])
    assert by["dataplane-D2"]["efficiency"] == pytest.approx(by["dataplane-D2"]["speedup"] / 2)
    # the links the simulator reads: a positive latency, bandwidth and all-reduce rate each (gloo's for DDP,
    # shm's for the replicas' sums)
    links = json.loads((tmp_path / "profile.json").read_text())["links"]
    assert all(w["latency_s"] > 0 and w["bandwidth"] > 0 and w["per_message_s"] == w["latency_s"] / 2
               and w["allreduce_rate"] > 0 for w in links.values())
    # the grid of the same 2 workers: 1 stage x 2 replicas
    grid = by["dataplane-1x2-D1"]
    assert grid["stages"] == 1 and grid["replicas"] == 2 and grid["depth"] == 1 and len(grid["busy_fraction"]) == 2
    assert "| 2 | dataplane-1x2-D1 |" in (tmp_path / "bench.md").read_text()


def test_records_take_each_modes_best_round_and_its_ratios():
    runs = {"reference-dfa": [(100.0, None), (120.0, None)], "backprop-fused-opt": [(200.0, None)],
            "ceiling-independent-stages": [(300.0, None)], "dataplane-D2": [(150.0, [0.5, 0.9]), (90.0, [0.4, 0.6])],
            "gpipe-M2": [(100.0, None)]}
    by = {r["mode"]: r for r in bench.summarize(runs, workers=2, batch=8, threads=1)}
    ref, dp, gp = by["reference-dfa"], by["dataplane-D2"], by["gpipe-M2"]
    assert ref["steps_per_s"] == 120.0 and ref["rounds"] == [100.0, 120.0] and ref["samples_per_s"] == 960.0
    assert dp["steps_per_s"] == 150.0 and dp["busy_fraction"] == [0.5, 0.9] and dp["depth"] == 2 and dp["stages"] == 2
    assert dp["vs_reference_dfa"] == 1.25 and dp["vs_ceiling"] == 0.5 and dp["speedup"] == 1.25
    assert dp["efficiency"] == 0.625 and dp["overhead_ms_per_step"] == pytest.approx(1e3 / 150 - 1e3 / 300)
    assert gp["speedup"] == 0.5 and "depth" not in gp  # backprop modes against backprop in one process


def test_a_sweep_over_worker_counts_writes_a_plot(tiny_bench):
    records, out = tiny_bench
    assert {r["workers"] for r in records} == {1, 2}
    saved = json.loads((out / "bench.json").read_text())
    assert saved["meta"]["stages"] == [1, 2] and saved["meta"]["fixed_blocks"] is None
    assert saved["meta"]["per_workers"]["2"]["partition"] == [1, 2]  # N blocks and the head on N stages
    assert saved["meta"]["per_workers"]["1"]["partition"] == [2]
    assert (out / "scaling.png").read_bytes()[:4] == b"\x89PNG"


def test_a_model_too_small_to_measure_anything_is_said_so_beside_its_numbers(tiny_bench):
    _, out = tiny_bench  # 16-wide blocks: a step takes microseconds
    saved = json.loads((out / "bench.json").read_text())["meta"]["per_workers"]
    assert all("a stage computes a step in" in saved[n]["too_small"] for n in ("1", "2"))
    table = (out / "bench.md").read_text()
    assert "Warning: N=1: the model is too small for these numbers to mean anything" in table
    assert "Warning: N=2:" in table and "--width 1024" in table
    assert "too_small" in json.loads((out / "profile.json").read_text())["per_workers"]["2"]


@pytest.mark.parametrize("ceiling, reference, why", [
    (100.0, 50.0, None),  # 10 ms per step, above single-process DFA: numbers that mean something
    (2000.0, 1000.0, "a stage computes a step in 0.50 ms (under 1 ms)"),
    (100.0, 150.0, "the ceiling is below single-process DFA"),
    (2000.0, 3000.0, "0.50 ms (under 1 ms) and the ceiling is below single-process DFA"),
])
def test_too_small_names_each_reason(ceiling, reference, why):
    records = [{"workers": 2, "mode": "ceiling-independent-stages", "steps_per_s": ceiling},
               {"workers": 2, "mode": "reference-dfa", "steps_per_s": reference},
               {"workers": 1, "mode": "ceiling-independent-stages", "steps_per_s": 1.0}]
    said = bench.too_small(records, 2)
    assert said is None if why is None else (said.startswith("N=2: the model is too small") and why in said)


@pytest.mark.slow
def test_a_bench_of_one_stage_runs_through(tmp_path):
    """`--stages 1` once waited a minute for a second link-measuring worker its one-CPU instance could not
    place, then raised; its instance now has the two CPUs those measures take."""
    done = subprocess.run([sys.executable, "-m", "dfa_async.cli", "bench", "--stages", "1", "--width", "16",
                           "--batch", "8", "--steps", "4", "--warmup", "1", "--repeats", "1", "--microbatches", "2",
                           "--no-calls", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| 1 | dataplane-D3 |" in done.stdout and "Warning: N=1" in done.stdout
    assert json.loads((tmp_path / "profile.json").read_text())["links"]["shm"]["latency_s"] > 0


@pytest.mark.slow
def test_a_bench_of_a_gpt_runs_every_mode_on_its_stages(tmp_path):
    """`bench --model gpt`: one GPT (token ids in, per-token loss out) split into 2 stages, every mode
    side by side: backprop and DFA in one process, the ceiling, the data plane, gpipe, 1f1b and ddp."""
    records = bench.run(batch=4, threads=1, stages=[2], depths=[1, 2], warmup=2, steps=6, out=tmp_path, repeats=1,
                        microbatches=[2], calls=False, gpt=dict(n_layer=4, n_head=2, n_embd=16, block_size=8))
    assert {r["mode"] for r in records} >= {"backprop-fused-opt", "reference-dfa", "ceiling-independent-stages",
                                            "dataplane-D1", "dataplane-D2", "gpipe-M2", "1f1b-M2", "ddp"}
    assert all(r["steps_per_s"] > 0 for r in records)
    meta = json.loads((tmp_path / "bench.json").read_text())["meta"]
    assert meta["gpt"]["n_layer"] == 4 and meta["per_workers"]["2"]["partition"] == [2, 3]  # the head with the last
    assert "a GPT of 4 layers (16 wide, 2 heads, context 8) on random tokens" in (tmp_path / "bench.md").read_text()
    assert not (tmp_path / "profile.json").exists()  # the simulator models tanh blocks only


def test_a_sweep_cut_short_keeps_every_n_it_measured(tmp_path, monkeypatch):
    """An end in the middle of N = 2 (a job's time limit) leaves N = 1's files whole: written, each replaced
    whole, before N = 2 began. (The measurements are stand-ins here; the session bench runs real ones.)"""
    runs = {m: [(100.0, None)] for m in ("pytorch-backprop", "backprop-fused-opt", "reference-dfa",
                                         "ceiling-independent-stages", "dataplane-D1")}
    ratios = {"dfa_step_over_backprop_step": 1.1, "dfa_step_over_plain_backprop_step": 0.9}

    def measure(width, batch, threads, n, *rest):
        if n == 2:
            raise KeyboardInterrupt  # the time limit
        meta = {"width": width, "batch": batch, "threads": threads, "steps": 6, "repeats": 1, **ratios}
        return bench.summarize(runs, n, batch, threads), meta, {"blocks": [], "partition": [2], "slowdown": 1.0}

    monkeypatch.setattr(bench, "measure", measure)
    monkeypatch.setattr(bench.pingpong, "measure", lambda transport: {"latency_s": 1e-5, "bandwidth": 1e9})
    monkeypatch.setattr(bench, "wait_quiet", lambda: True)
    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        bench.run(width=16, batch=8, stages=[1, 2], depths=[1], warmup=2, steps=6, out=out, repeats=1,
                  calls=False, baselines=False, tiny=False)
    first = json.loads((out / "bench.json").read_text())
    assert first["meta"]["stages"] == [1] and first["meta"]["stages_planned"] == [1, 2]
    assert {r["workers"] for r in first["records"]} == {1} and len(first["records"]) == 5
    assert "| 1 | dataplane-D1 |" in (out / "bench.md").read_text()
    profile = json.loads((out / "profile.json").read_text())
    assert set(profile["per_workers"]) == {"1"} and "tiny" not in profile  # no calibration runs asked for
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md", "profile.json"]  # no .tmp left


@pytest.mark.parametrize("kwargs,match", [({"depths": [0]}, "--depths"), ({"repeats": 0}, "--repeats"),
                                          ({"microbatches": [2, 3]}, "--microbatches"), ({"width": -4}, "--width")])
def test_bad_settings_fail_before_any_work(kwargs, match):
    args = dict(width=16, batch=8, stages=[2], depths=[1], warmup=2, steps=4)
    with pytest.raises(ValueError, match=match):
        bench.run(**{**args, **kwargs})

def test_bench_rejects_a_width_that_is_not_a_square():
    with pytest.raises(ValueError, match="--width"):
        modes.bench_config(1000, 8, 1, 2, 10)


def test_every_mode_sees_the_same_minibatches_and_drains_after_the_warmup():
    cfg, plan, ds = modes.setup(16, 8, 1, 2, warmup=3, steps=5)
    assert len(ds.x_train) == 8 * 8 and plan.total_steps == 8 and plan.boundaries == [2, 7]
    assert cfg.runtime.blocks_per_stage == [1, 2]


def test_idle_fraction_sees_a_core_kept_busy():
    """One process spinning on one of N cores leaves at most (N - 1) / N of the machine idle."""
    n = os.cpu_count()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # past its start-up
        busy = machine.idle_fraction(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert 0.0 <= busy <= 1 - 0.5 / n


def test_wait_quiet_returns_once_the_cores_are_idle_enough_and_gives_up_at_its_limit(monkeypatch):
    readings = iter([0.2, 0.5, 0.95, 0.1])
    monkeypatch.setattr(machine, "idle_fraction", lambda span: next(readings))
    assert machine.wait_quiet(idle=0.9, span=0.01, limit=10.0) and next(readings) == 0.1  # stopped at 0.95
    monkeypatch.setattr(machine, "idle_fraction", lambda span: time.sleep(span) or 0.5)
    t0 = time.monotonic()
    assert not machine.wait_quiet(idle=0.9, span=0.05, limit=0.2)
    assert 0.2 <= time.monotonic() - t0 < 2.0