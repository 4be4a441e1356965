"""Per-block optimizers and the learning-rate schedule, a pure function of the step, so every block
(wherever it lives) uses the same rate at the same step."""
from __future__ import annotations

import math

import torch

from .config import OptimConfig


def make(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)


def lr_at(cfg: OptimConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** (step // (cfg.step_every * steps_per_epoch))
    return cfg.lr
