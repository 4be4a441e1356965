"""Blocks and model builders. A model is an ``nn.Sequential`` of blocks, each block itself an
``nn.Sequential``; the last block is the head and outputs logits. Nothing here knows how the model is
trained or placed."""
from __future__ import annotations

import math

import torch
from torch import nn

from . import gpt, seeding
from .config import Config


def activation(name: str, slope: float = 0.01) -> nn.Module:
    return {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}.get(name, lambda: nn.LeakyReLU(slope))()


def mlp_blocks(in_features: int, widths: list[int], classes: int, act: str = "tanh", slope: float = 0.01,
               batchnorm: bool = False, dropout_input: float = 0.0, dropout_hidden: float = 0.0,
               flatten: bool = True, order: str = "standard") -> list[nn.Sequential]:
    """Fully connected blocks and a Linear head. A block is Linear -> (BatchNorm) -> activation ->
    (Dropout), or with `order = "paper"` (the paper's code) Linear -> (Dropout) -> activation ->
    (BatchNorm)."""
    blocks, d = [], in_features
    for i, w in enumerate(widths):
        layers = []
        if i == 0 and flatten:
            layers.append(nn.Flatten())
        if i == 0 and dropout_input:
            layers.append(nn.Dropout(dropout_input))
        layers.append(nn.Linear(d, w))
        bn = [nn.BatchNorm1d(w)] if batchnorm else []
        drop = [nn.Dropout(dropout_hidden)] if dropout_hidden else []
        if order == "paper":
            layers += [*drop, activation(act, slope), *bn]
        else:
            layers += [*bn, activation(act, slope), *drop]
        blocks.append(nn.Sequential(*layers))
        d = w
    head = [nn.Flatten()] if not widths and flatten else []
    blocks.append(nn.Sequential(*head, nn.Linear(d, classes)))
    return blocks


def cnn_blocks(in_shape: tuple[int, int, int], channels: list[int], widths: list[int], classes: int,
               act: str = "tanh", slope: float = 0.01, batchnorm: bool = False, dropout_input: float = 0.0,
               dropout_hidden: float = 0.0, order: str = "standard") -> list[nn.Sequential]:
    """The paper's CNN: per conv block conv 5x5 (padding 2) -> activation -> (BatchNorm) -> max-pool 3/2
    -> (Dropout), or with `order = "paper"` (its code) conv -> (Dropout2d) -> activation -> (BatchNorm)
    -> max-pool, the input dropout then channel-wise too; then fully connected blocks and the head."""
    blocks, c = [], in_shape[0]
    h, w = in_shape[1:]
    paper = order == "paper"
    for i, out in enumerate(channels):
        layers = [(nn.Dropout2d if paper else nn.Dropout)(dropout_input)] if i == 0 and dropout_input else []
        layers.append(nn.Conv2d(c, out, 5, padding=2))
        bn = [nn.BatchNorm2d(out)] if batchnorm else []
        if paper:
            layers += [*([nn.Dropout2d(dropout_hidden)] if dropout_hidden else []), activation(act, slope), *bn,
                       nn.MaxPool2d(3, 2)]
        else:
            layers += [activation(act, slope), *bn, nn.MaxPool2d(3, 2),
                       *([nn.Dropout(dropout_hidden)] if dropout_hidden else [])]
        blocks.append(nn.Sequential(*layers))
        c, h, w = out, (h - 3) // 2 + 1, (w - 3) // 2 + 1
    fc = mlp_blocks(c * h * w, widths, classes, act, slope, batchnorm, 0.0, dropout_hidden, order=order)
    return blocks + fc


def _structure(cfg: Config, in_shape: tuple[int, ...], classes: int) -> list[nn.Sequential]:
    m = cfg.model
    common = dict(act=m.activation, slope=m.leaky_slope, batchnorm=m.batchnorm,
                  dropout_input=m.dropout_input, dropout_hidden=m.dropout_hidden, order=m.block_order)
    if m.kind == "gpt":  # in_shape is (block_size,) token ids; classes is the vocabulary
        return gpt.blocks(classes, m.block_size, m.n_layer, m.n_head, m.n_embd, m.dropout, m.bias)
    if m.kind == "mlp":
        return mlp_blocks(math.prod(in_shape), cfg.hidden_widths(), classes, **common)
    return cnn_blocks(tuple(in_shape), m.channels, cfg.hidden_widths(), classes, **common)


def skeleton(cfg: Config, in_shape: tuple[int, ...], classes: int) -> nn.Sequential:
    """The model a config describes, on the meta device: its structure and shapes, no memory."""
    with torch.device("meta"):
        return nn.Sequential(*_structure(cfg, in_shape, classes))


def build_blocks(cfg: Config, in_shape: tuple[int, ...], classes: int, ids, device="cpu") -> dict[int, nn.Module]:
    """Blocks `ids` of the model a config describes, and no other: each is materialized from the meta
    skeleton and initialized from its own seed stream, so the same weights come out whichever process
    builds it, and a stage never holds the blocks of another."""
    shell, out = skeleton(cfg, in_shape, classes), {}
    for k in ids:
        block = shell[k].to_empty(device="cpu")  # the seed streams are CPU generators
        g = seeding.generator(cfg.train.seed, "init", k)
        if cfg.model.kind == "gpt":
            gpt.reset(block, g, cfg.model.n_layer)
        else:
            reset(block, g)
        out[k] = block.to(device)
    return out


def build(cfg: Config, in_shape: tuple[int, ...], classes: int) -> nn.Sequential:
    """The whole model a config describes (every block, see build_blocks)."""
    n = len(skeleton(cfg, in_shape, classes))
    return nn.Sequential(*build_blocks(cfg, in_shape, classes, range(n)).values())


def reset(block: nn.Module, g: torch.Generator) -> None:
    """PyTorch's default initialization (kaiming-uniform weights, uniform biases) drawn from `g`; every
    other layer's own (batchnorm: weight 1, bias 0, fresh running statistics)."""
    with torch.no_grad():
        for mod in block.modules():
            if not isinstance(mod, (nn.Linear, nn.Conv2d)):
                if hasattr(mod, "reset_parameters"):
                    mod.reset_parameters()
                continue
            fan_in = mod.weight[0].numel()
            bound = 1.0 / fan_in ** 0.5
            # kaiming_uniform_(a=sqrt(5)) reduces to U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
            mod.weight.uniform_(-bound, bound, generator=g)
            if mod.bias is not None:
                mod.bias.uniform_(-bound, bound, generator=g)


def from_sequential(seq: nn.Sequential, starts: list[int]) -> nn.Sequential:
    """Split a user's ``nn.Sequential`` into blocks: `starts` are the indices where a new block starts
    (e.g. [2, 4] makes blocks seq[0:2], seq[2:4], seq[4:]). The last block is the head."""
    cuts = [0, *starts, len(seq)]
    if sorted(set(cuts)) != cuts or cuts[0] != 0 or cuts[-1] != len(seq) or len(cuts) < 3:
        raise ValueError(f"starts: {starts} must be strictly increasing indices in 1..{len(seq) - 1}")
    return nn.Sequential(*[nn.Sequential(*list(seq)[a:b]) for a, b in zip(cuts, cuts[1:])])


def output_shapes(model: nn.Sequential, in_shape: tuple[int, ...],
                  dtype: torch.dtype = torch.float32) -> list[tuple[int, ...]]:
    """Per-sample output shape of every block, for inputs of `dtype` (int64: token ids)."""
    where = next(model.parameters(), torch.empty(0)).device
    shapes, x = [], torch.zeros(2, *in_shape, device=where, dtype=dtype)
    was = model.training
    model.eval()
    with torch.no_grad():
        for block in model:
            x = block(x)
            shapes.append(tuple(x.shape[1:]))
    model.train(was)
    return shapes
