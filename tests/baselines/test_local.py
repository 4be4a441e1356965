"""Backprop in one process: the step every baseline takes is plain autograd with the run's minibatches
and learning rate."""
import math

import torch
import torch.nn.functional as F

from dfa_async import data
from dfa_async.baselines.local import Backprop
from dfa_async.stage import Plan

from conftest import small_config


def test_backprop_is_plain_autograd_over_the_runs_minibatches_and_schedule():
    cfg = small_config(optim={"name": "sgd", "lr": 0.1, "momentum": 0.9, "schedule": "cosine", "fused": False})
    ds = data.load(cfg.data, cfg.train.seed)
    plan = Plan(cfg, ds.shape, ds.classes, 6, 16)
    bp = Backprop(plan, ds)
    bp.run(0, 6)
    net = plan.build()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    batches = data.Batches(len(ds.x_train), 16, cfg.train.seed)
    for t in range(6):
        for g in opt.param_groups:
            g["lr"] = 0.1 * 0.5 * (1 + math.cos(math.pi * t / 6))
        opt.zero_grad()
        idx = batches.indices(t)
        F.cross_entropy(net(ds.x_train[idx]), ds.y_train[idx]).backward()
        opt.step()
    for a, b in zip(bp.model().parameters(), net.parameters()):
        assert torch.equal(a, b)
