"""Fixed random feedback matrices. B_k has shape (classes, d_k): block k receives g_k = e @ B_k, reshaped
to its output shape. For a sequence, `classes` and d_k are features at one position (the vocabulary,
or the width where e is taken; the block's width), and the same B_k maps e at every position. Each
matrix is a pure function of (seed, k, dims), so it is drawn where block k lives and never travels."""
from __future__ import annotations

import math

import torch

from . import seeding


def _draw(init: str, rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    """A rows x cols matrix with entries of mean 0 and variance 1 (orthogonal: orthonormal rows, or
    columns when rows > cols, scaled by sqrt(max(rows, cols)); identity and wishart: of the same
    Frobenius norm as those draws)."""
    if init == "gaussian":
        return torch.randn(rows, cols, generator=g)
    if init == "uniform":
        return (torch.rand(rows, cols, generator=g) * 2 - 1) * math.sqrt(3.0)
    if init == "sign":
        return torch.randint(0, 2, (rows, cols), generator=g).float() * 2 - 1
    if init == "orthogonal":
        a = torch.randn(max(rows, cols), min(rows, cols), generator=g, dtype=torch.float64)
        q, r = torch.linalg.qr(a)
        q = q * torch.sign(torch.diagonal(r))  # unique Q (Haar-distributed)
        q = q.T if rows < cols else q
        return (q * math.sqrt(max(rows, cols))).float()
    if init == "identity":  # the one orthogonal matrix that is not random: e reaches block k unrotated
        return torch.eye(rows, cols) * math.sqrt(max(rows, cols))
    if init == "wishart":
        # A A^T / m, A rows x m gaussian, m = 2 rows: symmetric positive definite (eigenvalues in
        # Marchenko-Pastur's [(1 - 1/sqrt 2)^2, (1 + 1/sqrt 2)^2]), so e.(e B) > 0 for every e. Scaled to the
        # Frobenius norm of the other schemes' draws (E tr(W^2) = rows (1 + rows/m)).
        if rows != cols:
            raise ValueError(f"feedback.init: wishart is square; e has {rows} features, the block {cols}")
        m = 2 * rows
        a = torch.randn(rows, m, generator=g, dtype=torch.float64)
        return (a @ a.T / m * math.sqrt(rows / 1.5)).float()
    raise ValueError(f"feedback.init: {init!r}; choose gaussian, uniform, orthogonal, sign, identity or wishart")


def matrix(k: int, dims: list[int], classes: int, init: str = "gaussian", normalization: str = "paper",
           seed: int = 0) -> torch.Tensor:
    """B_k for hidden block k (0-based) of a model whose hidden blocks have output sizes `dims`.

    paper:       one classes x d_max matrix, entries of variance 1/(d_max*classes); block k takes its
                 first d_k columns times sqrt(d_max/d_k) (variance 1/(d_k*classes)).
    independent: a draw per block, entries of variance 1/(d_k*classes).
    none:        the paper's unnormalized feedback: one classes x d_max matrix of unit variance, block k
                 takes its first d_k columns.
    none-independent: a unit-variance draw per block.
    """
    d_k = dims[k]
    if normalization in ("paper", "none"):
        d_max = max(dims)
        full = _draw(init, classes, d_max, seeding.generator(seed, "feedback"))
        if normalization == "none":
            return full[:, :d_k].clone()
        return full[:, :d_k] / math.sqrt(d_max * classes) * math.sqrt(d_max / d_k)
    raw = _draw(init, classes, d_k, seeding.generator(seed, "feedback", k))
    if normalization == "independent":
        return raw / math.sqrt(d_k * classes)
    if normalization == "none-independent":
        return raw
    raise ValueError(f"feedback.normalization: {normalization!r}; choose paper, independent, none or "
                     "none-independent")


def project(B: torch.Tensor, e: torch.Tensor, shape: tuple[int, ...], positions: int = 0) -> torch.Tensor:
    """g = e @ B reshaped to the block's output (batch, *shape); with `positions` leading dims after the
    batch (a sequence), the same B at every position: e's features there times B."""
    lead = e.shape[:1 + positions]
    return (e.reshape(*lead, -1) @ B).reshape(e.shape[0], *shape)
