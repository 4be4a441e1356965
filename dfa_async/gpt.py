"""A decoder-only transformer (GPT) as blocks: the token and position embeddings with the first layer,
one layer per block after it, and the head (final LayerNorm and an untied linear decoder). A layer is
pre-LayerNorm: x + attention(LN(x)), then x + MLP(LN(x)), causal multi-head attention through
`scaled_dot_product_attention`, a GELU MLP four times as wide. Initialized as GPT-2 is (normal weights
of std 0.02, the residual projections 0.02 / sqrt(2 n_layer), zero biases). Nothing here knows how the
model is trained or placed."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _dropout(p: float) -> nn.Module:
    # No module where nothing drops: a block with a Dropout is seeded at every forward (rules.Learner).
    return nn.Dropout(p) if p else nn.Identity()


class Embedding(nn.Module):
    """Token ids (batch, T) -> token + learned position embeddings (batch, T, d)."""

    def __init__(self, vocab: int, block_size: int, d: int, dropout: float):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, d), nn.Embedding(block_size, d)
        self.drop = _dropout(dropout)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        where = torch.arange(idx.shape[1], device=idx.device)
        return self.drop(self.tokens(idx) + self.positions(where))


class SelfAttention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float, bias: bool):
        super().__init__()
        self.heads, self.p = heads, dropout
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=bias), nn.Linear(d, d, bias=bias)
        self.drop = _dropout(dropout)
        self.proj.residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.qkv(x).split(d, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0, is_causal=True)
        return self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))


class Layer(nn.Module):
    """One pre-LayerNorm transformer layer."""

    def __init__(self, d: int, heads: int, dropout: float, bias: bool):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(d, bias=bias), SelfAttention(d, heads, dropout, bias)
        self.ln2 = nn.LayerNorm(d, bias=bias)
        self.fc, self.proj = nn.Linear(d, 4 * d, bias=bias), nn.Linear(4 * d, d, bias=bias)
        self.drop = _dropout(dropout)
        self.proj.residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.drop(self.proj(F.gelu(self.fc(self.ln2(x)))))


def blocks(vocab: int, block_size: int, n_layer: int, n_head: int, n_embd: int, dropout: float = 0.0,
           bias: bool = False) -> list[nn.Sequential]:
    """n_layer + 1 blocks: [embeddings, layer 0], [layer 1], ..., [LayerNorm, decoder] (the head)."""
    out = [nn.Sequential(Embedding(vocab, block_size, n_embd, dropout), Layer(n_embd, n_head, dropout, bias))]
    out += [nn.Sequential(Layer(n_embd, n_head, dropout, bias)) for _ in range(n_layer - 1)]
    out.append(nn.Sequential(nn.LayerNorm(n_embd, bias=bias), nn.Linear(n_embd, vocab, bias=False)))
    return out


def reset(block: nn.Module, g: torch.Generator, n_layer: int) -> None:
    """GPT-2's initialization drawn from `g`: weights of linear layers and embeddings N(0, 0.02^2), the
    projections that end a residual branch N(0, (0.02 / sqrt(2 n_layer))^2), biases 0, LayerNorms 1 and 0."""
    with torch.no_grad():
        for mod in block.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                std = 0.02 / math.sqrt(2 * n_layer) if getattr(mod, "residual", False) else 0.02
                mod.weight.normal_(0.0, std, generator=g)
                if getattr(mod, "bias", None) is not None:
                    mod.bias.zero_()
            elif isinstance(mod, nn.LayerNorm):
                mod.reset_parameters()
