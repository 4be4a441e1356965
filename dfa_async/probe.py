"""The alignment probe, one stage at a time, so that no weights leave the stages.

A probe batch goes forward through every stage (on copies of its blocks, in train mode, dropout drawn
per block from the run's seed); the head turns its output into the loss and the error e. Then a true
backprop chain runs backward: each stage receives dL/dh of its last block from the next stage, measures
its blocks (the per-sample cosine of B_k e against dL/dh_k, and the angle between the block's DFA and
BP weight updates) and sends dL/d(its input) on. The result equals `rules.alignment` on the assembled
model, the single-process oracle."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from . import feedback, rules, seeding


class StageProbe:
    """One stage's side of a probe. `blocks`: block index -> module (copied here); `Bs`: block index ->
    B_k (None: the true gradient in its place); `last`: the model's head block index."""

    def __init__(self, blocks: dict[int, torch.nn.Module], Bs: dict[int, torch.Tensor | None], last: int,
                 error_scale: str, seed: int):
        self.ids = sorted(blocks)
        self.blocks = [copy.deepcopy(blocks[k]).train() for k in self.ids]
        self.Bs, self.last, self.scale, self.seed = Bs, last, error_scale, seed
        self.is_head = self.ids[-1] == last

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Run the blocks keeping the graph; returns the output (detached) for the next stage, or at the
        head the error e."""
        self.x = x.detach().requires_grad_(self.ids[0] > 0)  # the first stage sends nothing back
        self.hs, h = [], self.x
        for k, block in zip(self.ids, self.blocks):
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                torch.manual_seed(seeding.derive(self.seed, "probe", k))
                h = block(h)
            self.hs.append(h)
        if not self.is_head:
            return h.detach()
        self.loss = F.cross_entropy(h, y, reduction="sum" if self.scale == "sum" else "mean")
        _, self.e = rules.head_error(h.detach(), y, self.scale)
        return self.e

    def backward(self, g_out: torch.Tensor | None, e: torch.Tensor) -> tuple[list[dict], torch.Tensor | None]:
        """Given dL/d(output) (None at the head, which has the loss) and the head's e: the measures of the
        stage's hidden blocks and dL/d(input) for the stage before (None at the first stage)."""
        params = [list(block.parameters()) for block in self.blocks]
        flat = [p for ps in params for p in ps]
        inner = self.hs[:-1]
        wrt = flat + inner + ([self.x] if self.x.requires_grad else [])
        if self.is_head:
            grads = torch.autograd.grad(self.loss, wrt, retain_graph=True)
        else:
            grads = torch.autograd.grad(self.hs[-1], wrt, grad_outputs=g_out, retain_graph=True)
        n = len(flat)
        true_h = list(grads[n:n + len(inner)]) + [g_out]
        g_in = grads[n + len(inner)] if self.x.requires_grad else None
        out, i = [], 0
        for j, k in enumerate(self.ids):
            ps, bp = params[j], grads[i:i + len(params[j])]
            i += len(ps)
            if k == self.last:
                break
            h = self.hs[j]
            B = self.Bs.get(k)
            g = true_h[j] if B is None else feedback.project(B, e, h.shape[1:])
            cos = rules.per_sample_cosine(g, true_h[j])
            dfa = torch.autograd.grad(h, ps, grad_outputs=g, retain_graph=True)
            out.append({"block": k, "cos_mean": cos.mean().item(), "cos_std": cos.std().item(),
                        "update_angle": rules.update_angle(dfa, bp)})
        self.hs = self.x = self.loss = None  # free the graph
        return out, g_in
