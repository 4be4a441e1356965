"""Feedback matrices: the statistics of each normalization against its formula."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from dfa_async import feedback

DIMS, C = [800, 400, 200], 10


@pytest.mark.parametrize("init", ["gaussian", "uniform", "orthogonal", "sign"])
def test_paper_normalization_variance_and_shared_columns(init):
    d_max = max(DIMS)
    mats = [feedback.matrix(k, DIMS, C, init, "paper", seed=3) for k in range(3)]
    for k, B in enumerate(mats):
        assert B.shape == (C, DIMS[k])
        # Variance 1/(d_k * classes): N(0,1)/sqrt(d_max*classes) times sqrt(d_max/d_k).
        assert B.var().item() * DIMS[k] * C == pytest.approx(1.0, rel=0.12)
        assert abs(B.mean().item()) < 3 / math.sqrt(B.numel() * DIMS[k] * C)
    # Block k holds the first d_k columns of one shared matrix, rescaled.
    for k in (1, 2):
        scale = math.sqrt(DIMS[k] / d_max)
        torch.testing.assert_close(mats[k] * scale, mats[0][:, :DIMS[k]])


def test_paper_gaussian_full_matrix_is_n01_over_sqrt_dmax_classes():
    B = feedback.matrix(0, DIMS, C, "gaussian", "paper", seed=0)  # block 0 has d_max: the full matrix
    z = B * math.sqrt(max(DIMS) * C)
    assert z.mean().item() == pytest.approx(0.0, abs=0.05)
    assert z.std().item() == pytest.approx(1.0, abs=0.05)


def test_independent_draws_differ_per_block_with_their_own_variance():
    a = feedback.matrix(1, DIMS, C, "gaussian", "independent", seed=0)
    b = feedback.matrix(2, DIMS, C, "gaussian", "independent", seed=0)
    p = feedback.matrix(1, DIMS, C, "gaussian", "paper", seed=0)
    assert a.var().item() * DIMS[1] * C == pytest.approx(1.0, rel=0.12)
    assert not torch.allclose(a[:, :200], b)
    assert not torch.allclose(a, p)


def test_sign_matrix_is_plus_minus_a_constant():
    B = feedback.matrix(1, DIMS, C, "sign", "none", seed=0)
    assert set(B.unique().tolist()) == {-1.0, 1.0}
    Bp = feedback.matrix(1, DIMS, C, "sign", "independent", seed=0)
    assert torch.allclose(Bp.abs(), torch.full_like(Bp, 1 / math.sqrt(DIMS[1] * C)))


def test_orthogonal_rows_are_orthogonal():
    B = feedback.matrix(0, DIMS, C, "orthogonal", "none", seed=0)
    gram = B @ B.T / DIMS[0]
    torch.testing.assert_close(gram, torch.eye(C), atol=1e-5, rtol=0)


def test_same_seed_same_matrix_and_seed_matters():
    a = feedback.matrix(1, DIMS, C, "uniform", "paper", seed=5)
    assert torch.equal(a, feedback.matrix(1, DIMS, C, "uniform", "paper", seed=5))
    assert not torch.equal(a, feedback.matrix(1, DIMS, C, "uniform", "paper", seed=6))


def test_none_is_the_papers_unnormalized_slices_of_one_matrix():
    """The paper's code without feedback normalization: one classes x d_max matrix of unit variance, block
    k takes its first d_k columns, unscaled; `none-independent` draws per block."""
    mats = [feedback.matrix(k, DIMS, C, "gaussian", "none", seed=2) for k in range(3)]
    assert mats[0].var().item() == pytest.approx(1.0, rel=0.05)
    for k in (1, 2):
        assert torch.equal(mats[k], mats[0][:, :DIMS[k]])
    own = feedback.matrix(1, DIMS, C, "gaussian", "none-independent", seed=2)
    assert own.var().item() == pytest.approx(1.0, rel=0.1) and not torch.equal(own, mats[1])
    # Normalized and unnormalized paper matrices are the same draw, scaled.
    paper = feedback.matrix(1, DIMS, C, "gaussian", "paper", seed=2)
    torch.testing.assert_close(paper * math.sqrt(DIMS[1] * C), mats[1])


def test_wishart_is_symmetric_positive_definite_with_the_marchenko_pastur_spectrum():
    """A A^T / m with A d x 2d gaussian: symmetric, every eigenvalue inside Marchenko-Pastur's edges
    (1 -+ 1/sqrt 2)^2 (times the scale), scaled to the Frobenius norm of a unit-variance d x d draw."""
    d = 256
    B = feedback.matrix(0, [d, d], d, "wishart", "none", seed=1).double()
    assert torch.equal(B, B.T)
    lam = torch.linalg.eigvalsh(B) / math.sqrt(d / 1.5)  # the spectrum of A A^T / m itself
    lo, hi = (1 - 2 ** -0.5) ** 2, (1 + 2 ** -0.5) ** 2
    assert lam.min().item() > 0.8 * lo and lam.max().item() < 1.1 * hi
    assert lam.mean().item() == pytest.approx(1.0, rel=0.02)
    assert (B ** 2).sum().item() == pytest.approx(d * d, rel=0.05)
    # Per block under `independent`, each its own draw of variance 1/(d*classes)'s norm.
    a, b = (feedback.matrix(k, [d, d], d, "wishart", "independent", seed=1) for k in (0, 1))
    assert not torch.allclose(a, b)
    assert (a.double() ** 2).sum().item() == pytest.approx(1.0, rel=0.05)
    with pytest.raises(ValueError, match="wishart is square; e has 10 features, the block 800"):
        feedback.matrix(0, DIMS, C, "wishart", "paper")


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2 ** 31 - 1))
def test_wishart_feedback_points_every_error_within_kantorovichs_angle(seed):
    """For symmetric positive definite B, cos(e, e B) >= 2 sqrt(k) / (1 + k), k = lambda_max / lambda_min
    (Kantorovich): whatever e is, the signal pushes a residual stream downhill through its skip path."""
    d = 32
    B = feedback.matrix(0, [d, d], d, "wishart", "paper", seed=3).double()
    lam = torch.linalg.eigvalsh(B)
    k = (lam.max() / lam.min()).item()
    e = torch.randn(16, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cos = torch.nn.functional.cosine_similarity(e, e @ B, dim=1)
    assert cos.min().item() >= 2 * math.sqrt(k) / (1 + k) - 1e-12
