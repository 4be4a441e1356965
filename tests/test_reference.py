"""The single-process reference: deterministic, placement-independent, depth emulated exactly."""
import torch

from dfa_async import data, schedule
from dfa_async.reference import LocalPipeline
from dfa_async.stage import Plan

from conftest import small_config


def run(cfg, partition=None, steps=12):
    ds = data.load(cfg.data, cfg.train.seed)
    plan = Plan(cfg, ds.shape, ds.classes, steps, steps)
    pipe = LocalPipeline(plan, partition)
    bs = cfg.train.batch_size
    for op in schedule.ops(0, steps, cfg.runtime.depth, [steps - 1]):
        if op.kind == "forward":
            sl = slice(op.step * bs, (op.step + 1) * bs)
            pipe.forward(op.step, ds.x_train[sl], ds.y_train[sl])
        elif op.kind == "update":
            pipe.update(op.step)
    return pipe


def params(pipe):
    return [p.detach().clone() for p in pipe.model().parameters()] + [b.clone() for b in pipe.model().buffers()]


def test_a_seed_gives_bit_identical_runs():
    cfg = small_config(model={"dropout_hidden": 0.2, "batchnorm": True}, runtime={"depth": 2})
    a, b = params(run(cfg)), params(run(cfg))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    other = params(run(small_config(model={"dropout_hidden": 0.2, "batchnorm": True}, runtime={"depth": 2},
                                    train={"seed": 1})))
    assert not all(torch.equal(x, y) for x, y in zip(a, other))


def test_placement_never_changes_what_is_learned():
    cfg = small_config(model={"dropout_hidden": 0.2, "batchnorm": True}, runtime={"depth": 3})
    one = params(run(cfg, [[0, 1, 2]]))
    for partition in ([[0], [1], [2]], [[0, 1], [2]]):
        got = params(run(cfg, partition))
        assert all(torch.equal(x, y) for x, y in zip(one, got)), partition


def test_depth_changes_the_trajectory_and_staleness_follows_the_schedule():
    d1 = run(small_config(runtime={"depth": 1}))
    d3 = run(small_config(runtime={"depth": 3}))
    assert not all(torch.equal(x, y) for x, y in zip(params(d1), params(d3)))
    assert d3.staleness == schedule.staleness(schedule.ops(0, 12, 3, [11]))
    assert set(d1.staleness.values()) == {0}


def test_depth_two_equals_a_hand_written_stale_sequence():
    """D = 2 by hand: forward(t) uses the weights after updates 0..t-2."""
    cfg = small_config(runtime={"depth": 2})
    ds = data.load(cfg.data, 0)
    plan = Plan(cfg, ds.shape, ds.classes, 4, 4)
    pipe = LocalPipeline(plan)
    x, y = ds.x_train, ds.y_train
    b = cfg.train.batch_size
    for t in range(4):
        pipe.forward(t, x[t * b:(t + 1) * b], y[t * b:(t + 1) * b])
        if t >= 1:
            pipe.update(t - 1)
    pipe.update(3)
    assert all(torch.equal(p, q) for p, q in zip(params(pipe), params(run(cfg, steps=4))))


def test_cnn_with_batchnorm_and_dropout_learns_on_synthetic():
    cfg = small_config(model={"kind": "cnn", "channels": [4, 8], "widths": [16], "batchnorm": True,
                              "dropout_hidden": 0.1},
                       data={"shape": [1, 12, 12]}, runtime={"depth": 2})
    pipe = run(cfg, steps=8)
    assert all(torch.isfinite(p).all() for p in params(pipe))
