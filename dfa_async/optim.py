"""Optimizers and the learning-rate schedule. A stage steps one optimizer over all its blocks (one call
per update, whatever the number of blocks); its state is saved and restored per block, so a checkpoint
does not depend on how blocks are placed on stages. The learning rate is a pure function of
the step, so every block (wherever it lives) uses the same rate at the same step."""
from __future__ import annotations

import contextlib
import math

import torch

from .config import OptimConfig


def make(params: list[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer | None:
    """One optimizer over a stage's parameters (one group: every block has the same settings and rate,
    and each group costs a kernel launch per step); None when nothing learns. `optim.fused`: PyTorch's
    fused kernels (one pass over each tensor) on the devices that have them."""
    if not params:
        return None
    kw = {"fused": True} if cfg.fused and params[0].device.type in ("cpu", "cuda") else {}
    if cfg.name in ("adam", "adamw"):  # adamw's decay is decoupled: before_step applies it
        return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                weight_decay=cfg.weight_decay if cfg.name == "adam" else 0.0, **kw)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay, **kw)


def part_state(opt: torch.optim.Optimizer, first: int, count: int) -> dict:
    """The state of parameters first..first+count-1 of `opt`'s one group, as the state dict of an
    optimizer over those alone (what a block saves, wherever it is placed)."""
    full = opt.state_dict()
    (group,) = full["param_groups"]
    ids = group["params"][first:first + count]
    return {"state": {j: full["state"][p] for j, p in enumerate(ids) if p in full["state"]},
            "param_groups": [{**group, "params": list(range(count))}]}


def load_part_states(opt: torch.optim.Optimizer, parts: list[dict]) -> None:
    """Inverse of part_state: the saved states of consecutive parts of the group, in order."""
    (own,) = opt.param_groups
    state, offset = {}, 0
    for part in parts:
        (saved,) = part["param_groups"]
        # Copies: load_state_dict keeps tensors of the right dtype and device, so the optimizer would
        # otherwise share (and step) the caller's tensors.
        state.update({offset + int(j): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                      for j, s in part["state"].items()})
        offset += len(saved["params"])
    if offset != len(own["params"]):
        raise ValueError(f"optimizer state for {offset} tensors, the stage has {len(own['params'])}")
    opt.load_state_dict({"state": state, "param_groups": [{**parts[0]["param_groups"][0],
                                                            "params": list(range(offset))}]})


def decayed(params, cfg: OptimConfig) -> list[torch.Tensor]:
    """The parameters `adamw` decays: the matrices (no biases, gains or norms); none for other optimizers."""
    return [p for p in params if p.dim() >= 2] if cfg.name == "adamw" and cfg.weight_decay else []


def before_step(blocks, cfg: OptimConfig, lr: float, decay: list[torch.Tensor]) -> None:
    """What the settings add between a backward and the optimizer step, on `blocks` (modules).
    `clip_norm`: each block's gradient rescaled to at most that norm, the block's own (a norm across
    stages would need a sync). `adamw`: the decoupled weight decay of Loshchilov & Hutter (2019),
    w <- w (1 - lr wd), on `decay` (optim.decayed), before the Adam step, as torch.optim.AdamW orders it."""
    if cfg.clip_norm:
        for block in blocks:
            torch.nn.utils.clip_grad_norm_(block.parameters(), cfg.clip_norm, foreach=True)
    if decay:
        with torch.no_grad():
            torch._foreach_mul_(decay, 1.0 - lr * cfg.weight_decay)


class Prediction:
    """SpecTrain's weight prediction (Chen et al. 2018) for one optimizer: the parameters moved where its
    next step would take them, from its state alone (that step's own gradient is not known yet), for a
    forward whose step's update lands after others still in flight. Buffers are kept from call to call
    (fresh ones would page-fault on every forward)."""

    def __init__(self, opt: torch.optim.Optimizer, decay: list[torch.Tensor] = (), weight_decay: float = 0.0):
        self.opt, self.weight_decay = opt, weight_decay
        self.decay = {id(p) for p in decay}
        self.ids, self.kept, self.denom = None, [], []

    @contextlib.contextmanager
    def ahead(self, lr: float, steps: int):
        """Inside, each parameter with optimizer state has moved by Adam's lr m^/(sqrt(v^) + eps) (bias
        corrections after `steps` steps) and the decoupled decay lr wd w where it applies, or by SGD's lr
        times its momentum buffer; `lr` is the sum of the rates of the steps in flight. The parameters move
        in place (their storage, which the stash hooks key on, stays) and come back bit for bit on the way
        out. (`steps` is the caller's count: the fused kernels keep theirs on the device, and reading it
        would sync.)"""
        (group,) = self.opt.param_groups
        params = [p for p in group["params"] if self.opt.state.get(p)]
        if not params:
            yield
            return
        if self.ids != [id(p) for p in params]:
            self.ids = [id(p) for p in params]
            self.kept, self.denom = [torch.empty_like(p) for p in params], [torch.empty_like(p) for p in params]
        states = [self.opt.state[p] for p in params]
        with torch.no_grad():
            torch._foreach_copy_(self.kept, params)
            if "exp_avg" in states[0]:
                # m^/(sqrt(v^) + eps) = m / (sqrt(v) + eps c) / (c (1 - b1^n)), c = 1/sqrt(1 - b2^n)
                b1, b2 = group["betas"]
                c = 1 / math.sqrt(1 - b2 ** steps)
                torch._foreach_copy_(self.denom, [s["exp_avg_sq"] for s in states])
                torch._foreach_sqrt_(self.denom)
                torch._foreach_add_(self.denom, group["eps"] / c)
                torch._foreach_addcdiv_(params, [s["exp_avg"] for s in states], self.denom,
                                        -lr / (c * (1 - b1 ** steps)))
            else:
                torch._foreach_add_(params, [s["momentum_buffer"] for s in states], alpha=-lr)
            decayed = [(p, w) for p, w in zip(params, self.kept) if id(p) in self.decay]
            if decayed and self.weight_decay:
                torch._foreach_add_([p for p, _ in decayed], [w for _, w in decayed], alpha=-lr * self.weight_decay)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, self.kept)


def lr_at(cfg: OptimConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    if cfg.schedule == "warmup_cosine":  # nanoGPT's: linear warmup, then cosine down to lr_min at the end
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
        ratio = min((step - cfg.warmup_steps) / max(total_steps - cfg.warmup_steps, 1), 1.0)
        return cfg.lr_min + (cfg.lr - cfg.lr_min) * 0.5 * (1 + math.cos(math.pi * ratio))
    if cfg.schedule == "cosine":
        return cfg.lr_min + (cfg.lr - cfg.lr_min) * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) /
                                                                         max(total_steps, 1)))
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** (step // (cfg.step_every * steps_per_epoch))
    return cfg.lr
