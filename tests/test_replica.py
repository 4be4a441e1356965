"""A block on one replica's rows (replica.py) against the same block on the whole minibatch, in one
process: dropout draws sliced from the whole batch's, and batchnorm by the whole batch's statistics, with
the replicas' sums carried by threads (the runtime's group is tested in tests/runtime/test_replicas.py)."""
import threading

import pytest
import torch
from torch import nn

from dfa_async import replica, rules


def test_each_replica_gets_its_rows_of_the_whole_batchs_dropout_draws():
    block = nn.Sequential(nn.Linear(5, 7), nn.Dropout(0.4), nn.Tanh(), nn.Dropout1d(0.3))
    x = torch.randn(8, 5)
    torch.manual_seed(11)
    whole = block(x)
    for part in range(4):
        lo, hi = replica.rows(part, 4, 8)
        torch.manual_seed(11)
        with replica.Rows(part, 4, 8):
            mine = block(x[lo:hi])
        assert torch.allclose(mine, whole[lo:hi], atol=1e-7, rtol=1e-6), part
    # a mode that draws per replica instead would differ: the same rows drawn as a batch of their own
    torch.manual_seed(11)
    assert not torch.allclose(block(x[2:4]), whole[2:4])


def test_dropout_that_is_not_a_mask_is_refused():
    with replica.Rows(0, 2, 4), pytest.raises(NotImplementedError, match="runtime.replicas: alpha_dropout"):
        nn.AlphaDropout(0.2)(torch.randn(2, 3))


def threaded_sum(parts: int):
    """reduce(t) for `parts` threads: every thread gets the sum of their tensors, in thread order."""
    barrier = threading.Barrier(parts)
    box: dict = {}

    def reduce(t):
        box[threading.current_thread().name] = t.detach().clone()
        barrier.wait()
        total = sum(box[f"r{i}"] for i in range(parts))
        barrier.wait()
        return total
    return reduce


@pytest.mark.parametrize("shape", [(8, 6), (8, 3, 4, 4)], ids=["1d", "2d"])
def test_synchronized_batchnorm_equals_the_whole_batchs_forward_and_gradients(shape):
    torch.manual_seed(0)
    norm = nn.BatchNorm1d(shape[1]) if len(shape) == 2 else nn.BatchNorm2d(shape[1])
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x, dy = torch.randn(shape) * 3 + 1, torch.randn(shape)
    ref = type(norm)(shape[1])
    ref.load_state_dict(norm.state_dict())
    xr = x.clone().requires_grad_()
    out = ref(xr)
    out.backward(dy)
    whole = (out.detach(), xr.grad, ref.weight.grad, ref.bias.grad, ref.running_mean, ref.running_var)

    parts, reduce = 2, threaded_sum(2)
    copies = [type(norm)(shape[1]) for _ in range(parts)]
    results = [None] * parts

    def run(r):
        m = copies[r]
        m.load_state_dict(norm.state_dict())
        lo, hi = replica.rows(r, parts, shape[0])
        xs = x[lo:hi].clone().requires_grad_()
        with replica.Rows(r, parts, shape[0], reduce):
            y = m(xs)
        y.backward(dy[lo:hi])
        results[r] = (y.detach(), xs.grad)

    threads = [threading.Thread(target=run, args=(r,), name=f"r{r}") for r in range(parts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out, gx, gw, gb, rm, rv = whole
    assert torch.allclose(torch.cat([y for y, _ in results]), out, atol=1e-5)
    assert torch.allclose(torch.cat([g for _, g in results]), gx, atol=1e-5)
    # the weight's and bias's own gradients are per replica: their sum is the whole batch's
    assert torch.allclose(sum(m.weight.grad for m in copies), gw, atol=1e-5)
    assert torch.allclose(sum(m.bias.grad for m in copies), gb, atol=1e-5)
    for m in copies:  # the running statistics are the whole batch's, on every replica
        assert torch.allclose(m.running_mean, rm, atol=1e-6) and torch.allclose(m.running_var, rv, atol=1e-6)
        assert int(m.num_batches_tracked) == 1


def test_the_mean_error_of_a_replica_divides_by_the_whole_minibatchs_labels():
    logits, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    _, whole = rules.head_error(logits, y, "mean")
    _, half = rules.head_error(logits[4:], y[4:], "mean", parts=2)
    assert torch.allclose(half, whole[4:], atol=0, rtol=0)
