"""The backprop baselines on real Ray actors: one step's gradients equal plain single-process backprop's
on the same minibatch, and a few steps of training lower the loss."""
import pytest
import torch
import torch.nn.functional as F

from dfa_async import data, optim
from dfa_async.baselines import BackpropGroup
from dfa_async.stage import Plan

from conftest import small_config

pytestmark = pytest.mark.usefixtures("ray_instance")


def setup(stages, **model):
    cfg = small_config(model={"widths": [24, 24], **model}, data={"n_train": 512},
                       runtime={"blocks_per_stage": stages}, optim={"name": "sgd", "lr": 0.05, "momentum": 0.9})
    ds = data.load(cfg.data, cfg.train.seed)
    steps = len(ds.x_train) // cfg.train.batch_size
    return Plan(cfg, ds.shape, ds.classes, steps, steps), ds


def backprop_gradients(plan, ds, step):
    net = plan.build()
    idx = data.Batches(len(ds.x_train), plan.cfg.train.batch_size, plan.cfg.train.seed).indices(step)
    F.cross_entropy(net(ds.x_train[idx]), ds.y_train[idx]).backward()
    return {name: p.grad for name, p in net.named_parameters()}


@pytest.mark.parametrize("kind,stages", [("gpipe", [1, 2]), ("1f1b", [1, 1, 1]), ("ddp", [1, 2])])
def test_one_step_gradients_equal_backprop(kind, stages):
    plan, ds = setup(stages)
    group = BackpropGroup(kind, plan, ds, microbatches=4)
    try:
        got = group.gradients(3)
    finally:
        group.close()
    want = backprop_gradients(plan, ds, 3)
    assert got.keys() == want.keys()
    for name in want:  # a tolerance: microbatches (gpipe, 1f1b) and ddp's all-reduce sum in another order
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


def backprop_losses(plan, ds, steps):
    net = plan.build()
    opt = optim.make(list(net.parameters()), plan.cfg.optim)
    batches = data.Batches(len(ds.x_train), plan.cfg.train.batch_size, plan.cfg.train.seed)
    out = []
    for t in range(steps):
        idx = batches.indices(t)
        opt.zero_grad()
        loss = F.cross_entropy(net(ds.x_train[idx]), ds.y_train[idx])
        loss.backward()
        opt.step()
        out.append(loss.item())
    return out, net


@pytest.mark.parametrize("kind", ["gpipe", "1f1b", "ddp"])
def test_training_follows_backprop(kind):
    """30 steps in two windows: the loss falls, and every loss and the final weights are plain backprop's
    (up to the order of floating-point sums over microbatches)."""
    plan, ds = setup([1, 2])
    group = BackpropGroup(kind, plan, ds, microbatches=2)
    try:
        losses = group.run(0, 20)
        losses += group.run(20, 30)
        net = group.model()
    finally:
        group.close()
    want, ref = backprop_losses(plan, ds, 30)
    assert sum(losses[-5:]) < 0.9 * sum(losses[:5])
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(want), rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


def test_batch_must_split_into_microbatches():
    plan, ds = setup([1, 2])
    with pytest.raises(ValueError, match="train.batch_size: 16 must divide evenly into microbatches"):
        BackpropGroup("gpipe", plan, ds, microbatches=3)
    with pytest.raises(ValueError, match="microbatches: 1f1b needs at least one microbatch per stage; 1 < 2"):
        BackpropGroup("1f1b", plan, ds, microbatches=1)
