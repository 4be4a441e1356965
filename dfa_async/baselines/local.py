"""Backprop in one process on the same model, minibatches and (by default) optimizer kernels as the DFA
stages; `step` is the backprop step every baseline takes, in one process or on a Ray worker."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .. import data, optim


def token_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy, mean over the samples, or over every position of a sequence (the classes last)."""
    return F.cross_entropy(out.flatten(0, -2), y.flatten())


def step(opt: torch.optim.Optimizer, lr: float | None, forward_backward: Callable[[], object], before=None):
    """One backprop step: step t's learning rate (None: leave it), the gradients cleared, forward and
    backward (`forward_backward()`, which returns the loss where it is known), `before()` (the settings'
    clipping and decoupled decay: optim.before_step), then the optimizer step."""
    if lr is not None:
        for group in opt.param_groups:
            group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss = forward_backward()
    if before is not None:
        before()
    opt.step()
    return loss


class Backprop:
    """Plain backprop over the run's minibatches, stepped one step or a window at a time. `fused`: the
    stages' optimizer (optim.make: fused kernels); else PyTorch's SGD with the run's momentum, as a user
    writes it."""

    def __init__(self, plan, ds, fused: bool = True, device: str = "cpu"):
        cfg = plan.cfg
        self.plan, self.fused, self.device = plan, fused, torch.device(device)
        self.net = plan.build().to(self.device)
        if fused:
            self.opt = optim.make(list(self.net.parameters()), cfg.optim)
        else:
            self.opt = torch.optim.SGD(self.net.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum)
        self.batches = data.batches(len(ds.x_train), cfg, plan.window)
        # The minibatches gathered where the DFA stages gather theirs (data.on_device).
        self.x, self.y = (data.resident(a, self.device, cfg.data.on_device) for a in (ds.x_train, ds.y_train))
        self.scheduled = cfg.optim.schedule != "constant"
        self.decay = optim.decayed(self.net.parameters(), cfg.optim) if fused else []

    def step(self, t: int) -> torch.Tensor:
        plan = self.plan
        lr = optim.lr_at(plan.cfg.optim, t, plan.total_steps, plan.steps_per_epoch) if self.scheduled else None
        x = self.batches.inputs(self.x, t).to(self.device)
        y = self.batches.labels(self.y, t).to(self.device)

        def forward_backward():
            loss = token_loss(self.net(x), y)
            loss.backward()
            return loss
        cfg = plan.cfg.optim
        before = (lambda: optim.before_step(list(self.net), cfg, cfg.lr if lr is None else lr, self.decay)) \
            if self.fused else None  # the stages' optimizer: their clipping and decay too
        return step(self.opt, lr, forward_backward, before)

    def run(self, a: int, b: int) -> None:
        for t in range(a, b):
            self.step(t)

    def model(self) -> torch.nn.Sequential:
        return self.net

    def close(self) -> None:
        pass
