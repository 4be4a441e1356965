"""The simulator against schedules worked out by hand (closed forms), and against a real bench run."""
import json
import math
import shutil

import pytest

from dfa_async import cli, sim
from dfa_async.sim import engine, predict
from dfa_async.sim.links import Interconnect

FREE = Interconnect(0.0, math.inf)  # no latency, infinite bandwidth, no CPU per message


def test_engine_table_and_deadlock():
    a = [engine.Op("a1", 1.0), engine.Op("a2", 2.0, [("b1", 0.5)])]
    b = [engine.Op("b1", 3.0, [("a1", 0.0)])]
    assert engine.finish_times([a, b]) == {"a1": 1.0, "b1": 4.0, "a2": 6.5}
    with pytest.raises(ValueError, match="deadlock"):
        engine.finish_times([[engine.Op("x", 1, [("y", 0)])], [engine.Op("y", 1, [("x", 0)])]])


def test_engine_shares_each_core_among_the_workers_on_it():
    def one(name, after=()):
        return [engine.Op(name, 1.0, list(after))]

    # 3 workers on 2 cores: workers 0 and 1 share core 0, worker 2 has core 1 to itself
    assert engine.finish_times([one("a"), one("b"), one("c")], cores=2) == pytest.approx({"a": 2, "b": 2, "c": 1})
    # 4 workers on 2 cores, b waiting for a: core 0 runs a, then b, at full speed while c and d share core 1
    # (all four sharing both cores, a, c and d would run at 2/3 of their speed and b would end at 2.5)
    chain = [one("a"), one("b", [("a", 0.0)]), one("c"), one("d")]
    assert engine.finish_times(chain, cores=2) == pytest.approx({"a": 1, "b": 2, "c": 2, "d": 2})
    # a waiting worker holds no core
    assert engine.finish_times([one("a"), one("b", [("a", 1.0)])], cores=1) == pytest.approx({"a": 1, "b": 3})
    # a fractional number of cores is shared by all alike; enough cores run every op at full speed
    assert engine.finish_times([one("a"), one("b"), one("c")], cores=1.5) == pytest.approx({"a": 2, "b": 2, "c": 2})
    assert engine.finish_times([one("a"), one("b"), one("c")], cores=3) == pytest.approx({"a": 1, "b": 1, "c": 1})


def block(f=0.0, u=0.0, bp=None, opt=0.0, out=0, params=0):
    return {"dfa_forward_s": f, "dfa_update_s": u, "bp": bp or {}, "optimizer_s": opt, "out_bytes": out,
            "param_bytes": params}


def test_dfa_depth_1_waits_for_the_error_and_deeper_pipelines_run_at_the_slowest_stage():
    blocks = [block(1, 3), block(2, 1)]
    # D = 1: F0, then F1, then U0 (needs e from F1) before the next F0: period f0 + f1 + u0 = 6.
    assert predict.dfa(blocks, [1, 1], 60, 10, FREE, 1) == pytest.approx(60 / 6)
    # D >= 2: every stage busy; the slowest stage (4 s of forward + update) sets the period.
    assert predict.dfa(blocks, [1, 1], 60, 10, FREE, 3) == pytest.approx(60 / 4)
    # A transfer of the activation and of the error adds to D = 1's period: 2 x 0.5 s.
    slow = Interconnect(0.5, math.inf)
    assert predict.dfa(blocks, [1, 1], 60, 10, slow, 1) == pytest.approx(60 / 7)
    # The stages' software time per op lengthens each of D = 1's three ops in the chain: 6 + 3 x 0.5.
    assert predict.dfa(blocks, [1, 1], 60, 10, FREE, 1, per_op_s=0.5) == pytest.approx(60 / 7.5)


def test_gpipe_and_1f1b_closed_forms():
    n, m, F, B = 3, 4, 1.0, 2.0
    blocks = [block(bp={"2": [F, B]}, opt=0.5) for _ in range(n)]
    # GPipe: (m + n - 1) forward slots, then as many backward slots, then the optimizer on stage 0.
    assert predict.pipeline("gpipe", blocks, [1] * n, 8, FREE, m) == pytest.approx(8 / ((m + n - 1) * (F + B) + 0.5))
    # 1F1B has the same bubble as GPipe for one minibatch (it saves memory, not time).
    assert predict.pipeline("1f1b", blocks, [1] * n, 8, FREE, m) == pytest.approx(8 / ((m + n - 1) * (F + B) + 0.5))


def test_a_pipelines_software_time_is_paid_per_block():
    blocks = [block(bp={"4": [1.0, 2.0]}) for _ in range(2)]
    # one stage of two blocks, 2 microbatches: each action runs both blocks and pays 2 x 0.5 s
    assert predict.pipeline("gpipe", blocks, [2], 8, FREE, 2, per_action_s=0.5) == pytest.approx(8 / (2 * 3 + 2 * 5))


def test_message_costs_recover_the_cost_that_made_the_tiny_runs_times():
    tiny = {"blocks": [block(f=1e-4, u=1e-4, bp={"2": [1e-4, 2e-4], "4": [2e-4, 4e-4]}, out=64) for _ in range(3)],
            "slowdown": 1.0}
    one, two = {**tiny, "partition": [3]}, {**tiny, "partition": [1, 2]}
    gloo = Interconnect(50e-6, 1e9, host=True, per_message_s=20e-6)
    cost = {"gpipe-M2": 0.7e-3, "dataplane-D2": 0.2e-3}
    for mode in cost:  # "measured": the one-worker runs 2 ms a step slower than their compute, N = 2 as simulated
        one[mode] = 4 / (4 / sim.predict_mode(mode, one, 4, 10, gloo) + 2e-3)
    act = {mode: sim._per_action(mode, one, one[mode], 4, 10, gloo, 2) for mode in cost}
    assert act["gpipe-M2"] == pytest.approx(2e-3 / (2 * 2 * 3)) and act["dataplane-D2"] == pytest.approx(1e-3)
    for mode, c in cost.items():
        two[mode] = sim.predict_mode(mode, two, 4, 10, Interconnect(50e-6, 1e9, True, 20e-6 + c), 1.0, 2, act[mode])
    profile = {"tiny": {"1": one, "2": two}, "links": {"gloo": vars(gloo), "shm": vars(gloo)},
               "per_workers": {"2": {"transport": "shm"}}}
    got = sim.message_costs(profile, 4, 10, 2)
    assert set(got) == {(2, "gpipe-M2"), (2, "dataplane-D2")}
    assert got[2, "gpipe-M2"] == pytest.approx(0.7e-3, rel=1e-4) and got[2, "dataplane-D2"] == pytest.approx(0.2e-3, rel=1e-4)
    assert sim.message_costs({"links": {}}, 4, 10, 2) == {}  # a profile of an older bench: none


def test_ddp_closed_form():
    blocks = [block(bp={"4": [1.0, 2.0]}, opt=0.5, params=800)]
    link = Interconnect(0.1, 100.0)
    # ring all-reduce of 800 bytes on 2 workers: 2 latencies + 800 bytes moved at 100 B/s.
    assert predict.ddp(blocks, 2, 8, link) == pytest.approx(8 / (1 + 2 + 0.5 + 0.2 + 8))


def test_a_grid_of_replicas_closed_form():
    """One stage of two blocks, 2 replicas each on 4 of 8 rows: a block's DFA costs follow its backprop costs
    from 8 rows to 4 (half for the first block, three quarters for the head), and each update waits for the
    all-reduce of the stage's 200 bytes of parameters."""
    blocks = [block(1, 3, bp={"8": [2, 2], "4": [1, 1]}, params=100),
              block(1, 1, bp={"8": [2, 2], "4": [1.5, 1.5]}, params=100)]
    # a step: forward 0.5 + 0.75, update 1.5 + 0.75; two replicas each take 4 of the 8 rows
    assert predict.grid(blocks, [2], 8, 10, FREE, 1, 2) == pytest.approx(8 / 3.5)
    # a 2-worker ring moves the 200 bytes once, at 100 B/s: 2 s more per update
    assert predict.grid(blocks, [2], 8, 10, Interconnect(0.0, 100.0), 1, 2) == pytest.approx(8 / 5.5)
    # ... or at a measured all-reduce rate, where the link has one
    measured = Interconnect(0.0, 100.0, allreduce_rate=400.0)
    assert predict.grid(blocks, [2], 8, 10, measured, 1, 2) == pytest.approx(8 / 4.0)
    # the optimizer's step is each replica's whole: of a 3 s update, 1 s of it stays 1 s
    stepped = [dict(blocks[0], optimizer_s=1.0), blocks[1]]
    assert predict.grid(stepped, [2], 8, 10, FREE, 1, 2) == pytest.approx(8 / 4.0)
    # one replica is the pipeline itself
    assert predict.grid(blocks, [1, 1], 8, 10, FREE, 2, 1) == predict.dfa(blocks, [1, 1], 8, 10, FREE, 2)
    assert sim.predict_mode("dataplane-1x2-D1", {"blocks": blocks, "partition": [1, 1]}, 8, 10, FREE) == \
        pytest.approx(8 / 3.5)


def test_validate_and_scaling_on_a_real_bench(tiny_bench, capsys):
    _, tmp_path = tiny_bench
    rows, table = sim.validate(tmp_path)
    modes = {(r["workers"], r["mode"]) for r in rows}
    assert modes == {(n, m) for n in (1, 2) for m in ("dataplane-D2", "gpipe-M2", "1f1b-M2", "ddp")} | {
        (2, "dataplane-1x2-D1")}
    assert all(r["predicted"] > 0 and r["measured"] > 0 for r in rows) and "| 2 | dataplane-D2 | shm |" in table
    assert all(r["spread"] is None for r in rows) and "| - |" in table  # one round: no spread to show
    # every one-worker run calibrates its mode's software time, which the rows of N = 2 then use
    assert {(r["workers"], r["mode"]) for r in rows if r["calibration"]} == {m for m in modes if m[0] == 1}
    # the tiny model's runs on 1 and 2 workers calibrate each mode's time per message at N = 2
    assert "Time per message beyond the ping-pong" in table and "gpipe-M2 N=2" in table and "dataplane-D2 N=2" in table
    one = next(r for r in rows if r["mode"] == "dataplane-D2" and r["workers"] == 1)
    # matched exactly, unless the compute alone already predicts less than measured (no negative time)
    assert one["predicted"] == pytest.approx(one["measured"], rel=1e-6) or one["predicted"] < one["measured"]
    capsys.readouterr()
    assert cli.main(["simulate", str(tmp_path), "--link", "nvlink", "--workers", "1,2,4,8",
                     "--microbatches", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n| ") == 5 and "| 8 |" in out and "| 4 | " in out
    assert cli.main(["simulate", str(tmp_path), "--link", "nvlink", "--workers", "8", "--replicas", "1,2,4"]) == 0
    grids = capsys.readouterr().out.split("S stages x R replicas")[1]
    assert [ln.split("|")[2].strip() for ln in grids.splitlines() if ln.startswith("| 8 ")] == ["4 x 2", "2 x 4"]
    # fitted on a 16-wide model: the bench's warning comes first, in the predictions too
    assert out.startswith("Warning: fitted on a bench whose N=1: the model is too small") and "N=2:" in out
    assert table.startswith("Warning: fitted on a bench whose N=1")
    assert cli.main(["simulate", str(tmp_path), "--link", "carrier-pigeon"]) == 2
    assert "--link: 'carrier-pigeon'" in capsys.readouterr().err


def test_backprop_costs_between_measured_row_counts_are_linear():
    b = block(bp={"8": [1.0, 2.0], "32": [4.0, 5.0]})
    assert predict.bp_cost(b, 8) == (1.0, 2.0)
    assert predict.bp_cost(b, 16) == pytest.approx((2.0, 3.0))
    assert predict.bp_cost(block(bp={"8": [1.0, 2.0]}), 4) == pytest.approx((0.5, 1.0))


def test_validate_reports_how_far_apart_a_modes_rounds_were(tiny_bench, tmp_path):
    """The bench's folder with every mode's rounds 10 % apart: each row says so, beside its prediction."""
    _, folder = tiny_bench
    shutil.copytree(folder, tmp_path / "b")
    saved = json.loads((tmp_path / "b" / "bench.json").read_text())
    for r in saved["records"]:
        r["rounds"] = [r["steps_per_s"] / 1.1, r["steps_per_s"]]
    (tmp_path / "b" / "bench.json").write_text(json.dumps(saved))
    rows, table = sim.validate(tmp_path / "b")
    assert rows and all(r["spread"] == pytest.approx(0.1) for r in rows) and "| 10% |" in table
