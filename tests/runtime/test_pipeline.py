"""The Ray runtime (stages running windows of the schedule over the data plane) against the
single-process reference, on a real local Ray instance."""
import os
import re
import signal
import threading
import time

import pytest
import ray
import torch

from dfa_async import checkpoint, probe, runlog, train
from dfa_async.runtime import shm

from conftest import small_config

pytestmark = pytest.mark.usefixtures("ray_instance")


MLP = dict(model={"widths": [24, 24], "dropout_hidden": 0.1})
CNN = dict(model={"kind": "cnn", "channels": [4, 6], "widths": [12], "batchnorm": True, "dropout_hidden": 0.1},
           data={"shape": [1, 12, 12]})


def cfg_for(net, depth, stages, backend, **extra):
    sections = {k: dict(v) for k, v in net.items()}
    sections.setdefault("data", {}).update(n_train=352, n_test=64)  # 22 steps of 16
    sections["runtime"] = {"backend": backend, "depth": depth, "blocks_per_stage": stages}
    for k, v in extra.items():
        sections.setdefault(k, {}).update(v)
    return small_config(**sections)


def weights(run_dir):
    return torch.load(run_dir / "final_model.pt", weights_only=True)


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def same(a, b) -> bool:
    """Every tensor equal bit for bit (what the docs promise for Ray against the reference on a CPU)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("net,placements", [(MLP, ([], [2, 1])), (CNN, ([], [2, 2]))], ids=["mlp", "cnn"])
def test_same_weights_as_the_reference(tmp_path, net, placements, depth):
    ref = train(cfg_for(net, depth, [], "local"), tmp_path / "ref")
    assert ref.steps == 22
    for stages in placements:
        run = train(cfg_for(net, depth, stages, "ray"), tmp_path / f"ray{stages}")
        assert same(weights(tmp_path / "ref"), weights(tmp_path / f"ray{stages}")), stages
        assert run.test_accuracy == ref.test_accuracy


def gpt_config(text, depth, stages, backend, error_at, *extra):
    """A 3-layer GPT (4 blocks) on a small text, dropout on, the transformer recipe's optimizer: 24 steps."""
    from dfa_async import config

    return config.load(None, [
        "model.kind=gpt", "data.name=text", f"data.path={text}", "data.eval_windows=40", "model.n_layer=3",
        "model.n_head=2", "model.n_embd=16", "model.block_size=12", "model.dropout=0.1", "train.batch_size=6",
        "train.epochs=0", "train.max_steps=24", "checkpoint.every=10", "optim.name=adamw", "optim.weight_decay=0.1",
        "optim.clip_norm=0.5", "optim.schedule=warmup_cosine", "optim.warmup_steps=4", f"feedback.error_at={error_at}",
        f"runtime.backend={backend}", f"runtime.depth={depth}", f"runtime.blocks_per_stage={stages}", *extra])


@pytest.mark.parametrize("depth,stages,error_at,extra", [
    (1, [2, 2], "logits", ["train.dtype=bfloat16"]),
    (2, [1, 1, 1, 1], "hidden", ["feedback.init=wishart", "runtime.weight_prediction=true"]),
    (3, [2, 2], "hidden", ["runtime.weight_stashing=true", "feedback.init=identity"]),
    (3, [1, 1, 1, 1], "logits", ["runtime.weight_prediction=true"])])
def test_a_gpt_has_the_same_weights_as_the_reference(tmp_path, depth, stages, error_at, extra):
    """Per-token errors, integer inputs, (batch, T, d) activations: the Ray stages end with the reference's
    weights bit for bit (every value of D, stage count and error_at is covered; bfloat16 links against
    the bfloat16 reference; weight prediction at D = 2 and 3, where 1 and 2 updates are in flight)."""
    text = tmp_path / "t.txt"
    text.write_text("".join(f"{i * 7919 % 1009} the quick brown fox; " for i in range(300)))
    ref = train(gpt_config(text, depth, [], "local", error_at, *extra), tmp_path / "ref")
    run = train(gpt_config(text, depth, stages, "ray", error_at, *extra), tmp_path / "ray")
    assert ref.steps == run.steps == 24
    assert same(weights(tmp_path / "ref"), weights(tmp_path / "ray"))
    assert run.test_loss == ref.test_loss and run.test_accuracy == ref.test_accuracy


def test_flip_augmentation_is_the_same_on_ray_as_on_the_reference(tmp_path):
    """Stage 0 draws the mirrors itself, from (seed, step) alone, as the reference does."""
    net = dict(MLP, data={"shape": [2, 4, 6]})
    ref = train(cfg_for(net, 2, [], "local", data={"augment": "flip"}), tmp_path / "ref")
    train(cfg_for(net, 2, [], "ray", data={"augment": "flip"}), tmp_path / "ray")
    train(cfg_for(net, 2, [], "local"), tmp_path / "plain")
    assert ref.steps == 22
    assert same(weights(tmp_path / "ref"), weights(tmp_path / "ray"))
    assert max_diff(weights(tmp_path / "ref"), weights(tmp_path / "plain")) > 1e-3


def test_log_records_staleness_timestamps_and_throughput(tmp_path, capsys):
    train(cfg_for(MLP, 3, [], "ray"), tmp_path / "r")
    # three one-thread CPU stages on this machine alone: warned where they outnumber its cores
    err = capsys.readouterr().err
    assert ("3 stages x 1 thread(s)" in err) == (len(os.sched_getaffinity(0)) < 3), err
    recs = runlog.read(tmp_path / "r" / "events.msgpack")
    stages = [r for r in recs if r["kind"] == "stages"]
    assert len(stages[0]["pids"]) == 3 and stages[0]["device"] == "cpu"
    assert stages[0]["transport"] == ("shm" if shm.available() else "gloo")
    tl = [r for r in recs if r["kind"] == "timeline"]  # one per stage and window
    assert {r["stage"] for r in tl} == {0, 1, 2}
    for s in range(3):
        ops = [op for r in tl if r["stage"] == s for op in zip(r["op"], r["steps"], r["start"], r["end"],
                                                                r["staleness"])]
        assert all(a <= b for _, _, a, b, _ in ops)
        assert [t for op, t, *_ in ops if op == "forward"] == list(range(22))
        stale = [st for op, *_, st in ops if op == "update"]
        assert stale == [0, 1] + [2] * 20  # D - 1 once the pipeline is full (one epoch, drained at its end)
        assert max(r["in_flight"] for r in tl if r["stage"] == s) == 3  # D steps in flight, never more
        assert all(r["stash_bytes"] > 0 and r["peak_rss_bytes"] > 1e6 for r in tl if r["stage"] == s)
    summary = [r for r in recs if r["kind"] == "stage"]
    assert len(summary) == 3 and all(0 <= r["idle_fraction"] <= 1 for r in summary)
    assert all(r["samples_per_s"] > 0 for r in recs if r["kind"] == "train")


def kill_when(run_dir, step, box, actor=1):
    """Kill stage actor `actor`'s process (by its pid, from the run's log; by default the middle stage, for
    which the head then waits in a receive) once `step` was logged."""
    path = run_dir / "events.msgpack"
    while "pid" not in box:
        if path.exists():
            recs = runlog.read(path)
            pids = [r["pids"] for r in recs if r["kind"] == "stages"]
            if pids and any(r["kind"] == "train" and r["step"] >= step for r in recs):
                box["pid"] = pids[0][actor]
                os.kill(box["pid"], signal.SIGKILL)
                box["time"] = time.time()
            if any(r["kind"] == "done" for r in recs):
                return
        box["stop"].wait(0.01)


def run_with_kill(cfg, run_dir, step, actor=1):
    box = {"stop": threading.Event()}
    killer = threading.Thread(target=kill_when, args=(run_dir, step, box, actor), daemon=True)
    killer.start()
    try:
        return train(cfg, run_dir), box
    finally:
        box["stop"].set()
        killer.join()


LONG = dict(data={"n_train": 4800}, checkpoint={"every": 40, "keep": 3})  # 300 steps


def test_killed_stage_is_restarted_from_the_checkpoint_with_the_same_result(tmp_path):
    result, box = run_with_kill(cfg_for(MLP, 2, [], "ray", **LONG), tmp_path / "killed", step=100)
    assert "pid" in box, "the run ended before the kill"
    assert result.restarts == 1
    restarts = runlog.read(tmp_path / "killed" / "events.msgpack", "restart")
    assert len(restarts) == 1 and restarts[0]["checkpoint"].startswith("step-")
    # the stage killed (stage 1, block 1) is named with its node and pid
    assert re.match(rf"stage 1 \(blocks 1, node [\d.]+, pid {box['pid']}\) died \(ActorDiedError\)$",
                    restarts[0]["reason"]), restarts[0]["reason"]
    assert restarts[0]["time"] - box["time"] < 30  # the window its peers were waiting in ended at once
    straight = train(cfg_for(MLP, 2, [], "ray", **LONG), tmp_path / "straight")
    assert same(weights(tmp_path / "killed"), weights(tmp_path / "straight"))
    assert result.test_accuracy == straight.test_accuracy


def test_too_many_failures_stop_with_the_last_checkpoint_intact(tmp_path):
    cfg = cfg_for(MLP, 2, [], "ray", **LONG, runtime={"max_failures": 0})
    with pytest.raises(RuntimeError, match="max_failures"):
        run_with_kill(cfg, tmp_path / "r", step=100)
    path, state = checkpoint.latest(tmp_path / "r")
    assert state["step"] >= 39 and set(state["blocks"]) == {"0", "1", "2"}


def test_resume_on_ray_equals_a_straight_run(tmp_path):
    extra = dict(checkpoint={"every": 8, "keep": 5}, optim={"schedule": "cosine"})
    train(cfg_for(CNN, 2, [2, 2], "ray", **extra), tmp_path / "part")
    for p in (tmp_path / "part" / "checkpoints").glob("step-*.pt"):
        if checkpoint._step(p) > 8:
            p.unlink()
    train(cfg_for(CNN, 2, [2, 2], "ray", **extra), tmp_path / "part")
    train(cfg_for(CNN, 2, [], "local", **extra), tmp_path / "straight")
    assert same(weights(tmp_path / "part"), weights(tmp_path / "straight"))


def test_gloo_data_plane_gives_the_same_weights(tmp_path):
    run = train(cfg_for(MLP, 2, [], "ray", runtime={"transport": "gloo"}), tmp_path / "gloo")
    ref = train(cfg_for(MLP, 2, [], "local"), tmp_path / "ref")
    assert same(weights(tmp_path / "gloo"), weights(tmp_path / "ref"))
    assert run.test_loss == ref.test_loss


def test_windows_and_probes_never_change_what_is_learned(tmp_path):
    """Windows of 3 steps, probes every 5 (each cuts a window mid-pipeline) against one window per epoch
    on the reference: the same weights, losses and alignment."""
    probes = {"alignment": {"every": 5, "probe_size": 32}}
    ray_run = train(cfg_for(MLP, 3, [2, 1], "ray", runtime={"window": 3}, **probes), tmp_path / "ray")
    ref = train(cfg_for(MLP, 3, [], "local", runtime={"window": 0}, **probes), tmp_path / "ref")
    assert same(weights(tmp_path / "ray"), weights(tmp_path / "ref"))
    logs = [runlog.read(tmp_path / d / "events.msgpack") for d in ("ray", "ref")]
    train_losses = [[(r["step"], r["loss"]) for r in recs if r["kind"] == "train"] for recs in logs]
    assert train_losses[0] == train_losses[1] and len(train_losses[0]) == 22
    assert [a["step"] for a in ray_run.alignment] == [4, 9, 14, 19, 21]
    assert ray_run.alignment == ref.alignment


def test_stage_actors_carry_readable_names(tmp_path):
    """`ray list actors` and the dashboard show dfa-stage-<i>, in a namespace of the run's own."""
    from dfa_async import data
    from dfa_async.runtime import RayPipeline
    from dfa_async.stage import Plan

    cfg = cfg_for(MLP, 2, [1, 2], "ray")
    ds = data.load(cfg.data, cfg.train.seed)
    pipe = RayPipeline(Plan(cfg, ds.shape, ds.classes, 22, 22), ds)
    try:
        named = ray.util.list_named_actors(all_namespaces=True)
        assert sorted(a["name"] for a in named if a["namespace"] == pipe.namespace) == ["dfa-stage-0", "dfa-stage-1"]
        pipe.restart()
        named = ray.util.list_named_actors(all_namespaces=True)
        assert sorted(a["name"] for a in named if a["namespace"] == pipe.namespace) == [
            "dfa-stage-0-restart1", "dfa-stage-1-restart1"]
    finally:
        pipe.close()


@pytest.mark.parametrize("net,stages", [(MLP, [1, 1, 1]), (CNN, [1, 2, 1])], ids=["mlp", "cnn"])
def test_live_probe_through_the_actors_equals_the_single_process_measure(net, stages):
    """The probe runs stage by stage (a backprop chain through the actors); on the same weights it
    equals probe.alignment on the assembled model."""
    import math

    from dfa_async import data, feedback
    from dfa_async.runtime import RayPipeline
    from dfa_async.stage import Plan

    cfg = cfg_for(net, 2, stages, "ray")
    ds = data.load(cfg.data, cfg.train.seed)
    plan = Plan(cfg, ds.shape, ds.classes, 22, 22)
    pipe = RayPipeline(plan, ds)
    try:
        pipe.collect(pipe.submit(0, 7))
        got = pipe.align(48)
        held_out = pipe.align(40, "test", "eval")
        dims = [math.prod(s) for s in plan.out_shapes[:-1]]
        Bs = [feedback.matrix(k, dims, plan.classes, cfg.feedback.init, cfg.feedback.normalization, cfg.train.seed)
              for k in range(len(dims))]
        want = probe.alignment(pipe.model(), Bs, ds.x_train[:48], ds.y_train[:48], seed=cfg.train.seed)
        want_held_out = probe.alignment(pipe.model(), Bs, ds.x_test[:40], ds.y_test[:40], mode="eval")
    finally:
        pipe.close()
    assert [b["block"] for b in got] == list(range(plan.num_blocks))
    for g, w in [*zip(got, want), *zip(held_out, want_held_out)]:
        assert sorted(g) == sorted(w)
        for key in g:  # a tolerance: the probe's chain of per-stage backward calls sums in another order
            assert g[key] == pytest.approx(w[key], abs=1e-5), (g["block"], key)  # than one autograd pass


def test_live_probe_of_a_gpt_through_the_actors_equals_the_single_process_measure(tmp_path):
    """Per block, the cosine per token between the signal it learns from and the true gradient, and the
    update angle: through the actors as in one process (the error at the hidden state: the head's part
    of the probe differs from the logits' case, which every other probe test covers)."""
    error_at = "hidden"
    from dfa_async import data, feedback
    from dfa_async.runtime import RayPipeline
    from dfa_async.stage import Plan

    text = tmp_path / "t.txt"
    text.write_text("".join(f"{i * 7919 % 1009} the quick brown fox; " for i in range(300)))
    cfg = gpt_config(text, 2, [2, 2], "ray", error_at)
    ds = data.for_run(cfg)
    plan = Plan(cfg, ds.shape, ds.classes, 24, 24, window=ds.window)
    pipe = RayPipeline(plan, ds)
    try:
        pipe.collect(pipe.submit(0, 7))
        got = pipe.align(10)
        Bs = [feedback.matrix(k, plan.features[:-1], plan.error_features, cfg.feedback.init, cfg.feedback.normalization,
                              cfg.train.seed) for k in range(plan.num_blocks - 1)]
        x, y = data.first(ds.x_train, 10, ds.window), data.first(ds.y_train, 10, ds.window, shift=1)
        want = probe.alignment(pipe.model(), Bs, x, y, seed=cfg.train.seed, positions=1,
                               hidden_error=error_at == "hidden")
    finally:
        pipe.close()
    assert [b["block"] for b in got] == list(range(4)) and want[-1]["cos_mean"] == pytest.approx(1.0)
    for g, w in zip(got, want):
        for key in g:
            assert g[key] == pytest.approx(w[key], abs=1e-5, nan_ok=True), (g["block"], key)


def test_skipped_steps_are_the_same_on_ray_as_on_the_reference(tmp_path, monkeypatch):
    """train.on_nonfinite = skip: every stage drops the step whose error is not finite, on any placement."""
    from conftest import poison

    steps = poison(monkeypatch, 100, 352, 16, 22)
    skip = {"train": {"on_nonfinite": "skip"}}
    train(cfg_for(MLP, 3, [2, 1], "ray", **skip), tmp_path / "ray")
    train(cfg_for(MLP, 3, [], "local", **skip), tmp_path / "ref")
    assert same(weights(tmp_path / "ray"), weights(tmp_path / "ref"))
    for d in ("ray", "ref"):
        assert [r["step"] for r in runlog.read(tmp_path / d / "events.msgpack", "skip")] == steps


def test_the_transport_is_chosen_from_the_layout_with_a_reason():
    from dfa_async.config import ConfigError
    from dfa_async.runtime.pipeline import choose_transport

    table = [  # setting, stages, nodes, a GPU each, shm works -> transport
        ("auto", 1, 1, False, True, "none"),
        ("auto", 3, 1, False, True, "shm"),
        ("auto", 3, 1, False, False, "gloo"),
        ("auto", 3, 3, False, True, "gloo"),
        ("auto", 2, 1, True, True, "nccl"),
        ("auto", 4, 2, True, True, "nccl"),
        ("gloo", 3, 1, False, True, "gloo"),
    ]
    for setting, stages, nodes, gpu, shm_ok, want in table:
        got, why = choose_transport(setting, stages, nodes, gpu, shm_ok)
        assert got == want and why, (setting, stages, nodes, gpu, shm_ok)
    for setting, nodes, gpu, shm_ok, says in [("shm", 2, False, True, "every stage on one node"),
                                             ("shm", 1, False, False, "x86-64 Linux"),
                                             ("nccl", 1, False, True, "a whole GPU per stage")]:
        with pytest.raises(ConfigError, match=f"runtime.transport: .*{says}"):
            choose_transport(setting, 2, nodes, gpu, shm_ok)


def test_stages_that_do_not_answer_in_time_are_a_stage_failure():
    """A stage that never starts (its actor pending on an unreachable node) must not hang the driver: the
    first call's wait is bounded by runtime.placement_timeout_s, and the restart loop takes it from there."""
    from dfa_async.runtime.pipeline import RayPipeline
    from dfa_async.stage import StageFailure

    @ray.remote(num_cpus=0)
    def never():  # the stand-in for a stage that never comes up: an event nobody sets
        import threading

        threading.Event().wait()

    @ray.remote(num_cpus=0)
    def at_once():
        return 1

    refs = [at_once.remote(), never.remote()]
    ray.get(refs[0])  # answered (a loaded machine took longer than the timeout to start its worker)
    t0 = time.monotonic()
    with pytest.raises(StageFailure, match=r"stage\(s\) \[1\] did not answer within 0.5 s"):
        RayPipeline._get(None, refs, 0.5)
    assert time.monotonic() - t0 < 10
    ray.cancel(refs[1], force=True)
