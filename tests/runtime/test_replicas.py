"""runtime.replicas on a real local Ray instance: R copies of the pipeline, each on its share of every
minibatch, learn what one pipeline learns on the whole minibatch, stay identical step by step, survive a
killed replica, and resume under another R."""
import os
import urllib.request

import pytest
import ray
import torch

from dfa_async import checkpoint, config, data, report, runlog, train, windows
from dfa_async.config import ConfigError
from dfa_async.metrics import Exporter
from dfa_async.runtime import RayPipeline
from dfa_async.runtime.doctor import doctor
from dfa_async.runtime.pipeline import replicas_for
from dfa_async.stage import Plan

from conftest import small_config
from test_pipeline import run_with_kill

pytestmark = pytest.mark.usefixtures("ray_instance")

MLP = dict(model={"widths": [24, 24], "dropout_hidden": 0.1})
# SGD: the bias of the linear layer in front of a batchnorm has a gradient of pure rounding noise (the
# normalization removes any shift), which Adam would scale up to full-size steps in either run.
CNN = dict(model={"kind": "cnn", "channels": [4, 6], "widths": [12], "batchnorm": True, "dropout_hidden": 0.1},
           data={"shape": [1, 12, 12]}, optim={"name": "sgd", "momentum": 0.9},
           runtime={"sync_batchnorm": True})
STEPS = 200


def cfg_for(net, depth, stages, backend, replicas=1, steps=STEPS, **extra):
    sections = {k: dict(v) for k, v in net.items()}
    sections.setdefault("data", {}).update(n_train=16 * steps, n_test=64)
    sections.setdefault("runtime", {}).update(backend=backend, depth=depth, blocks_per_stage=stages)
    if backend == "local":
        sections["runtime"].pop("sync_batchnorm", None)
    if replicas != 1:
        sections["runtime"]["replicas"] = replicas
    for k, v in extra.items():
        sections.setdefault(k, {}).update(v)
    return small_config(**sections)


def weights(run_dir):
    return torch.load(run_dir / "final_model.pt", weights_only=True)


def close(a: dict, b: dict, tol: float = 1e-6) -> float:
    """Largest difference over every weight (parameters to `tol`; running statistics, which grow with
    the data, relative to their size); asserts they are within it."""
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        if not a[k].is_floating_point():
            assert torch.equal(a[k], b[k]), k
            continue
        diff = (a[k] - b[k]).abs().max().item()
        scale = max(1.0, a[k].abs().max().item()) if "running" in k else 1.0
        assert diff <= tol * scale, (k, diff)
        worst = max(worst, diff)
    return worst


@pytest.mark.slow  # 56 s; the default suite checks 12 steps of the hardest case (the next test)
@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("net,grid", [(MLP, [2, 1]), (CNN, [2, 2])], ids=["mlp-dropout", "cnn-batchnorm"])
def test_replicas_learn_what_one_pipeline_learns_on_the_whole_minibatch(tmp_path, net, grid, depth):
    one = train(cfg_for(net, depth, grid, "ray"), tmp_path / "one")
    assert one.steps == STEPS
    for stages, name in ((grid, "2x2"), ([sum(grid)], "1x2")):
        run = train(cfg_for(net, depth, stages, "ray", replicas=2), tmp_path / name)
        close(weights(tmp_path / "one"), weights(tmp_path / name))
        losses = [r["loss"] for r in runlog.read(tmp_path / name / "events.msgpack", "train")]
        ones = [r["loss"] for r in runlog.read(tmp_path / "one" / "events.msgpack", "train")]
        assert len(losses) == STEPS and max(abs(a - b) for a, b in zip(losses, ones)) < 1e-5
        assert abs(run.test_accuracy - one.test_accuracy) <= 1 / 64


def actor_states(pipe) -> list[dict]:
    return ray.get([a.state.remote() for a in pipe.actors])


def test_every_replica_holds_the_same_weights_after_every_step(tmp_path):
    """And at the end they hold what one pipeline learns (the reference, in this process), flips of the
    images included: each replica takes its rows of the whole minibatch's draws. With weight prediction,
    which every replica computes from its own (identical) optimizer state. (Without it: the opt-in test
    above, 200 steps.)"""
    flip, predict = {"augment": "flip"}, {"weight_prediction": True}
    cfg = cfg_for(CNN, 3, [2, 2], "ray", replicas=2, steps=12, data=flip, runtime=predict)
    ds = data.for_run(cfg)
    plan = Plan(cfg, ds.shape, ds.classes, 12, 12)
    pipe = RayPipeline(plan, ds)
    try:
        assert pipe.replicas == 2 and len(pipe.actors) == 4
        assert [(r["stage"], r["replica"]) for r in pipe.plan_rows()] == [(0, 0), (1, 0), (0, 1), (1, 1)]
        seen = []

        def check(win):
            states = actor_states(pipe)
            for k in (0, 1):  # stage k of replica 0 against stage k of replica 1, bit for bit
                a, b = states[k], states[2 + k]
                for block in a:
                    for name, t in a[block]["block"].items():
                        assert torch.equal(t, b[block]["block"][name]), (win.stop, block, name)
            seen.append(win.stop)
        windows.drive(pipe, 0, 12, fixed=1, on_window=check)
        assert seen == list(range(1, 13))
        # they did learn (the check above is not of two untouched copies)
        assert not torch.equal(actor_states(pipe)[0]["0"]["block"]["0.weight"],
                               plan.blocks([0], "cpu")[0].state_dict()["0.weight"])
        got = {f"{k}.{name}": t for k, part in pipe.state().items() for name, t in part["block"].items()}
    finally:
        pipe.close()
    train(cfg_for(CNN, 3, [], "local", steps=12, data=flip, runtime=predict), tmp_path / "one")
    close(weights(tmp_path / "one"), got)


def test_without_sync_batchnorm_each_replica_normalizes_by_its_own_rows():
    """DDP's default: the parameters stay identical, each replica's running statistics are its own."""
    cfg = cfg_for(CNN, 1, [4], "ray", replicas=2, steps=6, runtime={"sync_batchnorm": False})
    ds = data.for_run(cfg)
    pipe = RayPipeline(Plan(cfg, ds.shape, ds.classes, 6, 6), ds)
    try:
        windows.drive(pipe, 0, 6)
        a, b = (s["0"]["block"] for s in actor_states(pipe))
    finally:
        pipe.close()
    params = [k for k in a if "running" not in k and "num_batches" not in k]
    assert params and all(torch.equal(a[k], b[k]) for k in params)
    assert not torch.equal(a["2.running_mean"], b["2.running_mean"])  # conv -> activation -> batchnorm


@pytest.mark.slow  # 7 s; the sums of replicas on separate nodes
def test_the_replicas_sum_over_gloo_as_they_do_over_shared_memory(tmp_path):
    cfg = cfg_for(MLP, 2, [2, 1], "ray", replicas=2, steps=12, runtime={"transport": "gloo"})
    train(cfg, tmp_path / "gloo")
    assert {r["replicas"] for r in runlog.read(tmp_path / "gloo" / "events.msgpack", "stages")[0]["stages"]} == {"gloo"}
    train(cfg_for(MLP, 2, [], "local", steps=12), tmp_path / "one")
    close(weights(tmp_path / "one"), weights(tmp_path / "gloo"))


LONG = dict(checkpoint={"every": 40, "keep": 3})


@pytest.mark.slow  # 18 s
def test_a_killed_replica_restarts_every_actor_and_ends_with_the_uninterrupted_weights(tmp_path):
    cfg = cfg_for(MLP, 2, [2, 1], "ray", replicas=2, steps=300, **LONG)
    result, box = run_with_kill(cfg, tmp_path / "killed", 100, actor=2)  # stage 0 of replica 1
    assert "pid" in box, "the run ended before the kill"
    assert result.restarts == 1
    (restart,) = runlog.read(tmp_path / "killed" / "events.msgpack", "restart")
    assert "replica 1, node" in restart["reason"] and f"pid {box['pid']}" in restart["reason"], restart["reason"]
    train(cfg, tmp_path / "straight")
    assert close(weights(tmp_path / "killed"), weights(tmp_path / "straight"), 0.0) == 0.0  # bit for bit


@pytest.mark.slow  # 10 s
def test_a_resume_under_another_replica_count_continues_from_the_same_weights(tmp_path):
    extra = dict(checkpoint={"every": 8, "keep": 5}, optim={"schedule": "cosine"})
    train(cfg_for(MLP, 2, [2, 1], "ray", replicas=2, steps=24, **extra), tmp_path / "part")
    for p in (tmp_path / "part" / "checkpoints").glob("step-*.pt"):
        if checkpoint._step(p) > 8:
            p.unlink()
    path, state = checkpoint.latest(tmp_path / "part")
    assert state["step"] == 7
    train(cfg_for(MLP, 2, [3], "ray", steps=24, **extra), tmp_path / "part")  # resumed, one replica
    (resume,) = runlog.read(tmp_path / "part" / "events.msgpack", "resume")
    assert resume["changed"] == ["runtime.blocks_per_stage: [2, 1] -> [3]", "runtime.replicas: 2 -> 1"]
    train(cfg_for(MLP, 2, [3], "ray", steps=24, **extra), tmp_path / "straight")
    close(weights(tmp_path / "part"), weights(tmp_path / "straight"))


def test_the_log_metrics_and_report_name_each_replica(tmp_path, capsys):
    """With runtime.replicas = auto, which takes 2 of the 4 CPUs' worth for 2 stages."""
    ex = Exporter(0)
    try:
        train(cfg_for(MLP, 2, [2, 1], "ray", replicas="auto", steps=16, alignment={"every": 8, "probe_size": 32}),
              tmp_path / "r", metrics=ex)
        with urllib.request.urlopen(f"http://127.0.0.1:{ex.port}/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        ex.close()
    log = tmp_path / "r" / "events.msgpack"
    if len(os.sched_getaffinity(0)) < 4:  # 4 stage actors on fewer cores: said in one line
        assert "runtime.replicas: 2 stages x 2 replicas x 1 thread(s) on this machine's" in capsys.readouterr().err
    for s, r in ((0, 0), (1, 0), (0, 1), (1, 1)):
        forwards = sum(o == "forward" for rec in runlog.read(log, "timeline") if (rec["stage"], rec["replica"]) == (s, r)
                       for o in rec["op"])
        assert f'dfa_stage_forward_seconds_count{{replica="{r}",stage="{s}"}} {forwards:.1f}' in text.splitlines()
        assert forwards == 16
    (stages,) = runlog.read(log, "stages")
    assert stages["replicas"] == 2 and len(stages["pids"]) == 4 and len(set(stages["pids"])) == 4
    assert {(r["stage"], r["replica"]) for r in stages["stages"]} == {(0, 0), (1, 0), (0, 1), (1, 1)}
    assert all(r["replicas"] == "shm" for r in stages["stages"])  # one node
    assert {(r["stage"], r["replica"]) for r in runlog.read(log, "timeline")} == {(0, 0), (1, 0), (0, 1), (1, 1)}
    assert {(r["stage"], r["replica"]) for r in runlog.read(log, "stage")} == {(0, 0), (1, 0), (0, 1), (1, 1)}
    # the live probe runs through replica 0's stages: every block measured, at steps 7 and 15
    aligned = runlog.read(log, "align")
    assert [r["step"] for r in aligned] == [7, 15] and all(len(r["blocks"]) == 3 for r in aligned)
    first, bars = report.gantt(runlog.read(log, "timeline"))
    assert list(bars) == ["0 r0", "1 r0", "0 r1", "1 r1"]  # one row per actor
    assert "| 1 r1 |" in report.write(tmp_path / "r").read_text()


def test_auto_takes_as_many_replicas_as_the_cores_hold_for_the_stages():
    """(A run with auto: the test above.)"""
    assert replicas_for("auto", 2, 4, 16) == 2 and replicas_for("auto", 3, 4, 16) == 1
    assert replicas_for("auto", 1, 12, 16) == 8  # the largest count that divides the batch
    assert replicas_for(3, 1, 1, 16) == 3  # a number is taken as it is


def test_more_stage_actors_than_the_cluster_holds_is_one_line_before_any_actor_starts(tmp_path):
    cfg = cfg_for(MLP, 1, [2, 1], "ray", replicas=4, steps=4)
    before = len(ray.util.list_named_actors(all_namespaces=True))
    with pytest.raises(ConfigError) as err:
        train(cfg, tmp_path / "r")
    assert str(err.value) == ("runtime.replicas: 2 stages x 4 replicas need {'CPU': 8}, but the cluster has "
                              "{'CPU': 4.0} in all; use fewer stages or replicas, a larger cluster, or "
                              "runtime.autoscale = true if the cluster adds nodes on demand")
    assert len(ray.util.list_named_actors(all_namespaces=True)) == before


def test_a_replica_count_that_does_not_divide_the_batch_is_refused_before_anything_runs():
    with pytest.raises(ConfigError, match=r"^runtime.replicas: 3 replicas cannot share train.batch_size = 16 rows "
                                          r"equally; choose a divisor of 16 \(1, 2, 4, 8, 16\) or change the batch size$"):
        config.load(None, ["runtime.replicas=3", "train.batch_size=16"])
    with pytest.raises(ConfigError, match="^runtime.replicas: 2 copies of the pipeline need runtime.backend = ray"):
        config.load(None, ["runtime.replicas=2", "runtime.backend=local"])
    with pytest.raises(ConfigError, match="^runtime.replicas: expected an integer or 'auto', got 'many'$"):
        config.load(None, ["runtime.replicas=many"])
    with pytest.raises(ConfigError, match="^model.dropout: 0.1 with runtime.replicas = 2: attention dropout"):
        config.load(None, ["model.kind=gpt", "data.name=synthetic", "model.dropout=0.1", "runtime.replicas=2"])


@pytest.mark.slow  # 7 s
def test_the_doctor_shows_the_grid_and_pings_every_replicas_channels():
    lines = []
    rows = doctor(cfg_for(MLP, 2, [2, 1], "ray", replicas=2, steps=4), out=lines.append)
    assert lines[0].startswith("dfa-async doctor: 2 stage(s) x 2 replicas on 1 node(s)")
    assert lines[0].endswith("replicas' sums over shm")
    table = [ln.split() for ln in lines if ln[:5].strip().isdigit()]
    assert [(int(r[0]), int(r[1]), r[2]) for r in table] == [(0, 0, "0,1"), (1, 0, "2"), (0, 1, "0,1"), (1, 1, "2")]
    assert [(r["channel"], r["replica"]) for r in rows] == [((0, 1), 0), ((1, 0), 0), ((0, 1), 1), ((1, 0), 1)]
    assert all(r["round_trip_s"] > 0 for r in rows)


@pytest.mark.slow  # 7 s
def test_a_gpt_on_replicas_learns_what_one_pipeline_learns(tmp_path):
    """Token windows split by rows like images: 2 stages x 2 replicas of a small GPT (dropout 0, which
    replicas need) against the reference."""
    from test_pipeline import gpt_config

    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    extra = ["model.dropout=0"]
    train(gpt_config(text, 2, [2, 2], "ray", "hidden", *extra, "runtime.replicas=2"), tmp_path / "two")
    train(gpt_config(text, 2, [2, 2], "local", "hidden", *extra), tmp_path / "one")
    close(weights(tmp_path / "one"), weights(tmp_path / "two"))
