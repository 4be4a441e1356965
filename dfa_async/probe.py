"""The alignment probe, one stage at a time, so that no weights leave the stages.

A probe batch goes forward through every stage (on copies of its blocks, in train mode with dropout drawn
per block from the run's seed, or in eval mode); the head turns its output into the loss and the error e.
Then a true backprop chain runs backward: each stage receives dL/dh of its last block from the next stage,
measures its blocks (the per-sample cosine of the signal a block learns from against dL/dh_k, the same at
the block's pre-activation, and the angle between the block's DFA and BP weight updates) and sends
dL/d(its input) on. `chain` runs stages in one process; `alignment` is the whole model as one stage; the
Ray stages pass the same tensors between actors. Split anywhere, the chain gives the same measures."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from . import feedback, rules, seeding


class StageProbe:
    """One stage's side of a probe. `blocks`: block index -> module (copied here); `Bs`: block index ->
    B_k (None: the true gradient in its place); `last`: the model's head block index."""

    def __init__(self, blocks: dict[int, torch.nn.Module], Bs: dict[int, torch.Tensor | None], last: int,
                 error_scale: str, seed: int, mode: str = "train", positions: int = 0, hidden_error: bool = False):
        self.ids = sorted(blocks)
        self.blocks = [copy.deepcopy(blocks[k]).train(mode == "train") for k in self.ids]
        self.Bs, self.last, self.scale, self.seed = Bs, last, error_scale, seed
        self.positions, self.hidden_error = positions, hidden_error
        self.is_head = self.ids[-1] == last

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Run the blocks keeping the graph; returns the output (detached) for the next stage, or at the
        head the error e."""
        # the first stage sends nothing back (and its inputs may be token ids)
        if x.is_floating_point():  # measured in float32, whatever train.dtype passes on
            x = x.float()
        self.x = x.detach().requires_grad_(self.ids[0] > 0)
        self.hs, self.pres, h = [], [], self.x
        for k, block in zip(self.ids, self.blocks):
            layer, seen = rules.first_layer(block), []
            hook = layer.register_forward_hook(lambda m, i, o: seen.append(o)) if layer is not None else None
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                torch.manual_seed(seeding.derive(self.seed, "probe", k))
                h = block(h)
            if hook is not None:
                hook.remove()
            self.hs.append(h)
            self.pres.append(seen[0] if seen else None)
        if not self.is_head:
            return h.detach()
        self.loss = F.cross_entropy(h.flatten(0, -2), y.flatten(), reduction="sum" if self.scale == "sum" else "mean")
        _, self.e = rules.head_error(h.detach(), y, self.scale)
        into = self.hs[-2] if len(self.hs) > 1 else self.x  # the head's input
        if self.hidden_error and into.requires_grad:  # what the head broadcasts: e back through it
            (wire,) = torch.autograd.grad(self.hs[-1], into, self.e, retain_graph=True)
            return wire
        return self.e

    def backward(self, g_out: torch.Tensor | None, e: torch.Tensor) -> tuple[list[dict], torch.Tensor | None]:
        """Given dL/d(output) (None at the head, which has the loss) and the error the head broadcast: the
        measures of the stage's blocks and dL/d(input) for the stage before (None at the first stage)."""
        params = [list(block.parameters()) for block in self.blocks]
        flat = [p for ps in params for p in ps]
        inner = self.hs[:-1]
        pres = [p for p in self.pres if p is not None]
        wrt = flat + inner + pres + ([self.x] if self.x.requires_grad else [])
        if self.is_head:
            grads = torch.autograd.grad(self.loss, wrt + [self.hs[-1]], retain_graph=True)
            g_out, grads = grads[-1], grads[:-1]
        else:
            grads = torch.autograd.grad(self.hs[-1], wrt, grad_outputs=g_out, retain_graph=True)
        n = len(flat)
        true_h = list(grads[n:n + len(inner)]) + [g_out]
        true_pre = list(grads[n + len(inner):n + len(inner) + len(pres)])
        g_in = grads[-1] if self.x.requires_grad else None
        out, i = [], 0
        for j, k in enumerate(self.ids):
            ps, bp = params[j], grads[i:i + len(params[j])]
            i += len(ps)
            h = self.hs[j]
            if k == self.last:
                own = self.e  # the head's own signal
                g = own / (own.numel() // own.shape[-1]) if self.scale == "paper" else own
            else:
                B = self.Bs.get(k)
                g = true_h[j] if B is None else feedback.project(B, e, h.shape[1:], self.positions)
            dfa = torch.autograd.grad(h, ps, grad_outputs=g, retain_graph=True)
            p = self.positions
            rec = {"block": k, **rules.cosine_stats(g, true_h[j], positions=p), "update_angle": rules.update_angle(dfa, bp)}
            if self.pres[j] is not None:
                (dfa_pre,) = torch.autograd.grad(h, self.pres[j], grad_outputs=g, retain_graph=True)
                rec.update(rules.cosine_stats(dfa_pre, true_pre.pop(0), "pre_", positions=p))
            out.append(rec)
        self.hs = self.pres = self.x = self.loss = self.e = None  # free the graph
        return out, g_in


def chain(probes: list[StageProbe], x: torch.Tensor, y: torch.Tensor) -> list[dict]:
    """A probe through `probes` (the stages in order, in this process): forward to the head's e, then the
    backprop chain back; every block's measures, in block order."""
    for p in probes[:-1]:
        x = p.forward(x)
    e = probes[-1].forward(x, y)
    g, out = None, []
    for p in reversed(probes):
        blocks, g = p.backward(g, e)
        out = blocks + out
    return out


def alignment(model: torch.nn.Sequential, Bs: list[torch.Tensor | None], x: torch.Tensor, y: torch.Tensor,
              error_scale: str = "mean", seed: int = 0, mode: str = "train", positions: int = 0,
              hidden_error: bool = False) -> list[dict]:
    """Per block k of `model` (the head last), on the probe batch (x, y):
    - `cos_mean`, `cos_std`: per-sample cosine between the signal block k learns from (B_k e for a
      hidden block, the head's own error for the head) and the true gradient dL/dh_k (the paper's
      measure; the head's is 1 by construction);
    - `zero_share`, `cos_live_mean`: the share of samples whose true gradient is exactly 0 (a saturated
      softmax), which count with cosine 0 in `cos_mean`, and the mean over the others (rules.cosine_stats);
    - `pre_cos_mean`, `pre_cos_std` (and `pre_zero_share`, `pre_cos_live_mean`): the same at the output of
      the block's first linear/conv layer (the pre-activation), the signal taken back through the block;
    - `update_angle`: the angle in degrees between the block's DFA and BP weight updates.
    A None in `Bs` puts the true gradient in place of B_k e (BP against itself: cosines 1, angle 0). The
    model is not changed: it runs on a copy, in `mode` (train: block k's dropout drawn from the stream
    ("probe", k) of `seed`; eval: no dropout, batchnorm running statistics)."""
    last = len(model) - 1
    whole = StageProbe(dict(enumerate(model)), {k: B for k, B in enumerate(Bs) if k != last}, last,
                       error_scale, seed, mode, positions, hidden_error)
    return chain([whole], x, y)
