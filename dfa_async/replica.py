"""What changes for a block that sees one replica's rows of each minibatch (runtime.replicas = R): R
replicas of a stage, each on rows r·B/R … (r+1)·B/R, must learn what one stage learns on all B rows.

- Dropout: the mask is drawn for the whole minibatch, from the same seeded generator, and the replica
  keeps its rows, so the draws are those of the one-pipeline run.
- Batchnorm (`sync`): the statistics are the whole minibatch's, summed over the replicas in the forward
  and again in the backward (the gradient of a normalization by batch statistics needs sums over every
  row). Without `sync` each replica normalizes by its own rows, as DDP does by default.
- The gradients: each replica's are sums over its own rows of an error already divided by the whole
  minibatch's label count, so their sum over the replicas is the one-pipeline gradient.

Every sum over the replicas goes through `reduce(tensor) -> tensor`, a callable the runtime hands in; nothing
here knows which group carries it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

DROPOUTS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d}
REFUSED = {F.alpha_dropout: "alpha_dropout", F.feature_alpha_dropout: "feature_alpha_dropout"}


class Rows(TorchFunctionMode):
    """Inside a block's forward: the block runs on rows [lo, hi) of a minibatch of `batch` rows. Dropout
    masks are drawn for all `batch` rows and sliced; with `reduce`, batchnorm in training mode uses the
    whole minibatch's statistics (SyncNorm)."""

    def __init__(self, part: int, parts: int, batch: int, reduce=None):
        super().__init__()
        (self.lo, self.hi), self.batch, self.parts, self.reduce = rows(part, parts, batch), batch, parts, reduce

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in DROPOUTS:
            return self._dropout(func, *args, **kwargs)
        if func in REFUSED:
            raise NotImplementedError(f"runtime.replicas: {REFUSED[func]} cannot be drawn for the whole minibatch "
                                      "and sliced (it is not a mask); use runtime.replicas = 1")
        if func is F.scaled_dot_product_attention and (kwargs.get("dropout_p") or (len(args) > 4 and args[4])):
            raise NotImplementedError("runtime.replicas: attention dropout is drawn inside "
                                      "scaled_dot_product_attention, where a replica cannot slice it; use "
                                      "model.dropout = 0 or runtime.replicas = 1")
        if func is F.batch_norm and self.reduce is not None:
            return self._batch_norm(*args, **kwargs)
        return func(*args, **kwargs)

    def _dropout(self, func, input, p=0.5, training=True, inplace=False):
        if not training or p == 0:
            return func(input, p, training, inplace)
        if input.shape[0] != self.hi - self.lo:
            raise RuntimeError(f"replica: dropout on {input.shape[0]} rows, expected {self.hi - self.lo}")
        # The same draws as the whole batch's: a mask of its shape from the same generator state.
        mask = func(torch.ones((self.batch, *input.shape[1:]), dtype=input.dtype, device=input.device), p, True)
        mask = mask[self.lo:self.hi]
        return input.mul_(mask) if inplace else input * mask

    def _batch_norm(self, input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                    eps=1e-5):
        if not training:
            return F.batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
        return SyncNorm.apply(input, weight, bias, running_mean, running_var, momentum, eps, self.reduce, self.parts)


class SyncNorm(torch.autograd.Function):
    """Batch normalization by the statistics of every replica's rows together: two sums over the
    replicas forward (the mean, then the variance about it, as torch computes them), one backward. Every
    replica holds as many rows, so the count is known without a sum (nor a device sync)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, reduce, parts):
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        n = x.numel() // x.shape[1] * parts
        mean = reduce(x.sum(dims)) / n
        centered = x - mean.view(shape)
        var = reduce(centered.square().sum(dims)) / n
        invstd = torch.rsqrt(var + eps)
        xhat = centered * invstd.view(shape)
        out = xhat
        if weight is not None:
            out = out * weight.view(shape) + bias.view(shape)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
                running_var.mul_(1 - momentum).add_(var * (n / max(n - 1, 1)), alpha=momentum)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.dims, ctx.shape, ctx.n, ctx.reduce = dims, shape, n, reduce
        return out

    @staticmethod
    def backward(ctx, dy):
        xhat, invstd, weight = ctx.saved_tensors
        dims, shape, n = ctx.dims, ctx.shape, ctx.n
        sum_dy, sum_dy_xhat = dy.sum(dims), (dy * xhat).sum(dims)
        both = ctx.reduce(torch.cat([sum_dy, sum_dy_xhat]))
        g_sum, g_xhat = both[:len(sum_dy)] / n, both[len(sum_dy):] / n
        scale = invstd if weight is None else invstd * weight
        dx = (dy - g_sum.view(shape) - xhat * g_xhat.view(shape)) * scale.view(shape)
        # The weight's and bias's own gradients are this replica's sums: the replicas' update sums them.
        dw, db = (sum_dy_xhat, sum_dy) if weight is not None else (None, None)
        return dx, dw, db, None, None, None, None, None, None


def rows(part: int, parts: int, batch: int) -> tuple[int, int]:
    """Rows [lo, hi) of a minibatch of `batch` that replica `part` of `parts` takes (as tensor_split cuts)."""
    return part * batch // parts, (part + 1) * batch // parts
