"""The learning rule against math derived independently: closed forms and plain autograd."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfa_async import feedback, model as models, probe, rules
from dfa_async.reference import LocalPipeline
from dfa_async.stage import Plan

from conftest import small_config


class Solo:
    """One learner with its own plain SGD: the rule alone, as a stage applies it."""

    def __init__(self, block, B, index=0, rule="dfa", is_head=False, out_shape=None, momentum=0.0, keep=None):
        self.learner = rules.Learner(block, index, rule=rule, is_head=is_head, B=B, out_shape=out_shape, seed=0,
                                     keep_units=keep)
        self.opt = torch.optim.SGD(block.parameters(), lr=1.0, momentum=momentum)

    def forward(self, step, x):
        return self.learner.forward(step, x)

    def update(self, step, e, lr):
        (stale,) = rules.update([self.learner], self.opt, step, e, lr)
        return stale


make_learner = Solo


def test_head_error_is_the_gradient_of_cross_entropy():
    logits = torch.randn(7, 5, requires_grad=True)
    y = torch.randint(0, 5, (7,))
    for scale, red in (("mean", "mean"), ("sum", "sum")):
        loss, e = rules.head_error(logits.detach(), y, scale)
        (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction=red), logits)
        torch.testing.assert_close(e, g)
        assert loss.item() == pytest.approx(F.cross_entropy(logits, y).item())
    # per-sample error: softmax - onehot
    _, e = rules.head_error(logits.detach(), y, "sum")
    expected = torch.softmax(logits.detach(), 1) - F.one_hot(y, 5)
    torch.testing.assert_close(e, expected)


def test_dfa_update_of_linear_tanh_equals_closed_form():
    torch.manual_seed(1)
    block = nn.Sequential(nn.Linear(6, 4), nn.Tanh())
    W0, b0 = block[0].weight.detach().clone(), block[0].bias.detach().clone()
    B = torch.randn(3, 4)
    h = torch.randn(5, 6)
    e = torch.randn(5, 3)
    learner = make_learner(block, B, out_shape=(4,))
    learner.forward(0, h)
    learner.update(0, e, lr=0.1)
    # Noekland: delta_a = (B e) * f'(a), dW = delta_a^T h (here e @ B with B of shape classes x d).
    a = h @ W0.T + b0
    delta = (e @ B) * (1 - torch.tanh(a) ** 2)
    torch.testing.assert_close(block[0].weight.detach(), W0 - 0.1 * delta.T @ h)
    torch.testing.assert_close(block[0].bias.detach(), b0 - 0.1 * delta.sum(0))


def test_dfa_update_of_conv_block_equals_independent_computation():
    torch.manual_seed(2)
    block = nn.Sequential(nn.Conv2d(2, 3, 5, padding=2), nn.Tanh(), nn.MaxPool2d(3, 2))
    W0, b0 = block[0].weight.detach().clone(), block[0].bias.detach().clone()
    x = torch.randn(4, 2, 9, 9)
    out_shape = (3, 4, 4)
    B = torch.randn(10, 48)
    e = torch.randn(4, 10)
    learner = make_learner(block, B, out_shape=out_shape)
    learner.forward(0, x)
    learner.update(0, e, lr=1.0)
    # Independent: im2col convolution, tanh, max-pool routing by argmax, im2col weight gradient.
    cols = F.unfold(x, 5, padding=2)                          # (N, C*25, L)
    a = (W0.view(3, -1) @ cols + b0[:, None]).view(4, 3, 9, 9)
    t = torch.tanh(a)
    _, idx = F.max_pool2d(t, 3, 2, return_indices=True)
    g = (e @ B).view(4, *out_shape)
    dt = torch.zeros(4, 3, 81).scatter_add_(2, idx.flatten(2), g.flatten(2))
    da = dt * (1 - t.flatten(2) ** 2)
    dW = torch.einsum("nol,nkl->ok", da, cols).view_as(W0)
    torch.testing.assert_close(block[0].weight.detach(), W0 - dW, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(block[0].bias.detach(), b0 - da.sum((0, 2)), atol=1e-5, rtol=1e-5)


def test_dfa_does_not_reach_other_blocks():
    torch.manual_seed(3)
    blk = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    x = torch.randn(3, 4, requires_grad=True)
    learner = make_learner(blk, torch.randn(2, 4), out_shape=(4,))
    learner.forward(0, x)
    learner.update(0, torch.randn(3, 2), lr=1.0)
    assert x.grad is None


def _plan(**sections):
    cfg = small_config(**sections)
    return Plan(cfg, (1, 8, 8), 10, total_steps=10, steps_per_epoch=10)


def test_bp_rule_equals_autograd_on_the_whole_sequential():
    plan = _plan(feedback={"rule": "bp"}, optim={"name": "sgd", "lr": 0.1, "momentum": 0.0})
    pipe = LocalPipeline(plan)
    net = copy.deepcopy(pipe.model())
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    pipe.forward(0, x, y)
    pipe.update(0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    torch.manual_seed(0)
    F.cross_entropy(net(x), y).backward()
    opt.step()
    for (n, p), q in zip(pipe.model().named_parameters(), net.parameters()):
        torch.testing.assert_close(p, q, msg=n)


def test_shallow_changes_only_the_head():
    plan = _plan(feedback={"rule": "shallow"})
    pipe = LocalPipeline(plan)
    before = copy.deepcopy(pipe.model())
    for t in range(3):
        pipe.forward(t, torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))
        pipe.update(t)
    after = pipe.model()
    for k in range(len(after) - 1):
        for p, q in zip(after[k].parameters(), before[k].parameters()):
            assert torch.equal(p, q)
    assert not torch.equal(after[-1][0].weight, before[-1][0].weight)


def test_alignment_of_bp_against_itself_is_one():
    torch.manual_seed(4)
    net = nn.Sequential(*models.mlp_blocks(20, [16, 12], 5))
    x, y = torch.randn(32, 20), torch.randint(0, 5, (32,))
    out = probe.alignment(net, [None, None], x, y)
    assert [b["block"] for b in out] == [0, 1, 2]  # the head too
    for b in out:
        assert b["cos_mean"] == pytest.approx(1.0, abs=1e-9)
        assert b["cos_std"] == pytest.approx(0.0, abs=1e-6)
        assert b["update_angle"] == pytest.approx(0.0, abs=1e-3)


def test_alignment_of_random_feedback_matches_a_direct_computation():
    torch.manual_seed(5)
    net = nn.Sequential(*models.mlp_blocks(20, [16], 5))
    B = torch.randn(5, 16)
    x, y = torch.randn(8, 20), torch.randint(0, 5, (8,))
    b, _ = probe.alignment(net, [B, None], x, y)
    # Direct: true dL/dh1 = (e W2) for the linear head.
    h1 = net[0](x)
    _, e = rules.head_error(net[1](h1).detach(), y, "mean")
    true = e @ net[1][0].weight.detach()
    g = e @ B
    cos = F.cosine_similarity(g, true.detach(), dim=1)
    assert b["cos_mean"] == pytest.approx(cos.mean().item(), abs=1e-6)
    assert b["cos_std"] == pytest.approx(cos.std().item(), abs=1e-6)
    assert 0 < b["update_angle"] < 180


def test_bottleneck_mask_trains_only_kept_units():
    torch.manual_seed(6)
    block = nn.Sequential(nn.Linear(5, 10), nn.Tanh())
    keep = rules.bottleneck_units(10, 3, seed=0)
    assert keep.sum() == 3
    W0 = block[0].weight.detach().clone()
    learner = make_learner(block, torch.randn(4, 10), out_shape=(10,), momentum=0.9, keep=keep)
    for t in range(3):
        learner.forward(t, torch.randn(6, 5))
        learner.update(t, torch.randn(6, 4), lr=0.5)
    changed = (block[0].weight.detach() != W0).any(1)
    assert torch.equal(changed, keep)


def test_stale_update_with_batchnorm_uses_stashed_activations():
    """D = 2: forward(0), forward(1), update(0), update(1) works with batchnorm (live-parameter stash);
    update 0 equals the one taken right after forward(0), and update 1 reports staleness 1."""
    torch.manual_seed(7)
    blk = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Tanh())
    twin = copy.deepcopy(blk)
    B = torch.randn(3, 4)
    x0, x1, e0, e1 = torch.randn(6, 5), torch.randn(6, 5), torch.randn(6, 3), torch.randn(6, 3)
    a, b = make_learner(blk, B, out_shape=(4,)), make_learner(twin, B, out_shape=(4,))
    a.forward(0, x0)
    a.forward(1, x1)
    assert a.update(0, e0, lr=0.1) == 0
    b.forward(0, x0)
    b.update(0, e0, lr=0.1)
    for p, q in zip(blk.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)
    w = blk[0].weight.detach().clone()
    assert a.update(1, e1, lr=0.1) == 1
    assert not torch.equal(blk[0].weight, w)


def test_feedback_projection_shape():
    B = torch.randn(10, 2 * 3 * 3)
    g = feedback.project(B, torch.randn(4, 10), (2, 3, 3))
    assert g.shape == (4, 2, 3, 3)


def test_stash_bytes_count_the_activations_saved_for_each_in_flight_update():
    """Linear + tanh saves its input and its output (the weight is live, not copied): per step
    batch * (in + out) * 4 bytes, released by the update."""
    block = nn.Sequential(nn.Linear(20, 12), nn.Tanh())
    learner = rules.Learner(block, 0, rule="dfa", is_head=False, B=torch.randn(5, 12), out_shape=(12,), seed=0)
    for t in range(3):
        learner.forward(t, torch.randn(16, 20))
    assert learner.stash_bytes == {t: 16 * (20 + 12) * 4 for t in range(3)}
    learner.take(0, torch.randn(16, 5))
    assert sorted(learner.stash_bytes) == [1, 2]


def test_the_papers_error_convention_per_sample_for_hidden_blocks_mean_for_the_head():
    """error_scale = paper, one SGD step (lr 0.1, no momentum) of a 2-block net, in closed form: with
    e = softmax - onehot per sample, hidden dW1 = ((e B) * (1 - h1^2))^T x, head dW2 = (e / N)^T h1."""
    cfg = small_config(feedback={"error_scale": "paper"}, optim={"name": "sgd", "lr": 0.1, "momentum": 0.0},
                       model={"widths": [12]})
    plan = Plan(cfg, (1, 8, 8), 10, total_steps=10, steps_per_epoch=10)
    pipe = LocalPipeline(plan)
    net = copy.deepcopy(pipe.model())
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    pipe.forward(0, x, y)
    pipe.update(0)
    W1, b1, W2, b2 = net[0][1].weight, net[0][1].bias, net[1][0].weight, net[1][0].bias
    xf = x.flatten(1)
    h1 = torch.tanh(xf @ W1.T + b1)
    e = F.softmax(h1 @ W2.T + b2, dim=1) - F.one_hot(y, 10).float()
    B = feedback.matrix(0, [12], 10, "gaussian", "paper", seed=0)
    delta = (e @ B) * (1 - h1 ** 2)
    after = pipe.model()
    torch.testing.assert_close(after[0][1].weight, W1 - 0.1 * delta.T @ xf, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(after[1][0].weight, W2 - 0.1 * (e / 16).T @ h1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(after[1][0].bias, b2 - 0.1 * (e / 16).sum(0), rtol=1e-5, atol=1e-6)


def test_pre_activation_and_head_cosines_in_closed_form():
    """For Linear -> tanh, the pre-activation gradient is the block's signal times tanh'(a): DFA
    (e B) * (1 - h^2), BP (e W2) * (1 - h^2); the head learns from its true gradient (cosine 1, angle 0)."""
    torch.manual_seed(8)
    net = nn.Sequential(*models.mlp_blocks(20, [16], 5))
    B = torch.randn(5, 16)
    x, y = torch.randn(9, 20), torch.randint(0, 5, (9,))
    hidden, head = probe.alignment(net, [B, None], x, y)
    h1 = net[0](x).detach()
    _, e = rules.head_error(net[1](h1), y, "mean")
    dfa, bp = (e @ B) * (1 - h1 ** 2), (e @ net[1][0].weight.detach()) * (1 - h1 ** 2)
    cos = F.cosine_similarity(dfa, bp, dim=1)
    assert hidden["pre_cos_mean"] == pytest.approx(cos.mean().item(), abs=1e-6)
    assert hidden["pre_cos_std"] == pytest.approx(cos.std().item(), abs=1e-6)
    assert head["block"] == 1 and head["cos_mean"] == pytest.approx(1.0, abs=1e-9)
    assert head["update_angle"] == pytest.approx(0.0, abs=1e-3)


def test_elements_bottleneck_trains_a_fixed_random_share_of_the_entries():
    """form = elements (the paper's code): each entry of the restricted block's linear layer is kept
    with probability b/width, fixed for the run; the others stay at their initial values under momentum."""
    cfg = small_config(bottleneck={"block": 1, "width": 8, "form": "elements"}, optim={"name": "sgd", "lr": 0.1},
                       model={"widths": [32, 32]})
    plan = Plan(cfg, (1, 8, 8), 10, total_steps=10, steps_per_epoch=10)
    pipe = LocalPipeline(plan)
    before = copy.deepcopy(pipe.model())
    for t in range(4):
        pipe.forward(t, torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))
        pipe.update(t)
    after = pipe.model()
    masks = rules.bottleneck_elements(before[1], 8, 32, cfg.train.seed)
    assert set(masks) == {"0.weight", "0.bias"}
    share = torch.cat([m.flatten() for m in masks.values()]).float().mean().item()
    assert 0.15 < share < 0.35  # 8/32 = 0.25 of 32*32 + 32 entries
    for name, keep in masks.items():
        moved = dict(after[1].named_parameters())[name] != dict(before[1].named_parameters())[name]
        assert not moved[~keep].any() and moved[keep].float().mean() > 0.9
    assert not torch.equal(after[0][1].weight, before[0][1].weight)  # the other blocks learn in full


def test_cosine_stats_count_samples_with_a_zero_true_gradient():
    """A saturated softmax gives e = 0 exactly: such samples count with cosine 0 in the paper's mean;
    zero_share says how many, cos_live_mean averages the rest."""
    signal = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [2.0, 0.0]])
    true = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    stats = rules.cosine_stats(signal, true)
    live = [1.0, 2 ** -0.5]
    assert stats["cos_mean"] == pytest.approx(sum(live) / 4)
    assert stats["zero_share"] == pytest.approx(0.5)
    assert stats["cos_live_mean"] == pytest.approx(sum(live) / 2)
    assert rules.cosine_stats(signal, torch.zeros(4, 2), "pre_")["pre_cos_live_mean"] != \
        rules.cosine_stats(signal, torch.zeros(4, 2), "pre_")["pre_cos_live_mean"]  # NaN: no live sample


# -- sequences: the error and the feedback per position ---------------------------------------------------------
def test_per_token_error_is_the_gradient_of_the_mean_loss_over_every_token():
    logits = torch.randn(3, 7, 11, requires_grad=True)
    y = torch.randint(0, 11, (3, 7))
    for scale, red in (("mean", "mean"), ("sum", "sum")):
        loss, e = rules.head_error(logits.detach(), y, scale)
        (g,) = torch.autograd.grad(F.cross_entropy(logits.reshape(21, 11), y.reshape(21), reduction=red), logits)
        torch.testing.assert_close(e, g)
        assert loss.item() == pytest.approx(F.cross_entropy(logits.reshape(21, 11), y.reshape(21)).item())


def test_per_token_dfa_update_of_a_linear_block_equals_the_closed_form():
    """The same B at every position: block k's pre-activation error at token t is e_t B, and a linear
    block's update sums (e_t B)^T x_t over every sample and token."""
    torch.manual_seed(2)
    block = nn.Sequential(nn.Linear(6, 4))
    W0, b0 = block[0].weight.detach().clone(), block[0].bias.detach().clone()
    B, x, e = torch.randn(11, 4), torch.randn(3, 7, 6), torch.randn(3, 7, 11)
    learner = rules.Learner(block, 0, rule="dfa", is_head=False, B=B, out_shape=(7, 4), seed=0, positions=1)
    opt = torch.optim.SGD(block.parameters(), lr=1.0)
    learner.forward(0, x)
    rules.update([learner], opt, 0, e, 0.1)
    g = torch.einsum("btr,rd->btd", e, B)
    torch.testing.assert_close(block[0].weight.detach(), W0 - 0.1 * torch.einsum("btd,bti->di", g, x))
    torch.testing.assert_close(block[0].bias.detach(), b0 - 0.1 * g.sum((0, 1)))
    torch.testing.assert_close(feedback.project(B, e, (7, 4), positions=1), g)


def test_the_hidden_error_is_e_taken_back_through_the_head():
    """error_at = hidden: a head LayerNorm -> Linear broadcasts dL/d(its input) (plain autograd of the mean
    token loss), and learns from the logits' e itself."""
    torch.manual_seed(3)
    head = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 5, bias=False))
    twin = copy.deepcopy(head)
    h, y = torch.randn(2, 4, 8), torch.randint(0, 5, (2, 4))
    learner = rules.Learner(head, 1, rule="dfa", is_head=True, B=None, out_shape=(4, 5), seed=0, positions=1,
                            input_grad=True)
    logits = learner.forward(0, h)
    _, e = rules.head_error(logits, y)
    wire = learner.input_gradient(0, e)
    x = h.clone().requires_grad_()
    loss = F.cross_entropy(twin(x).reshape(8, 5), y.reshape(8))
    want, *grads = torch.autograd.grad(loss, [x, *twin.parameters()])
    torch.testing.assert_close(wire, want)
    opt = torch.optim.SGD(head.parameters(), lr=1.0)
    rules.update([learner], opt, 0, wire, 0.5, head_e=e)  # the broadcast error is not the head's own
    for p, p0, g in zip(head.parameters(), twin.parameters(), grads):
        torch.testing.assert_close(p.detach(), p0.detach() - 0.5 * g)


@pytest.mark.parametrize("stash", [False, True])
def test_weight_stashing_backpropagates_through_the_weights_the_forward_used(stash):
    """D = 2: forward 0, forward 1, update 0, update 1. Inside a two-layer block the update of step 1 takes
    g back through the second layer: as it is after update 0 (no stashing), or as forward 1 saw it."""
    torch.manual_seed(4)
    block = nn.Sequential(nn.Linear(5, 4, bias=False), nn.Linear(4, 3, bias=False))
    A0, C0 = block[0].weight.detach().clone(), block[1].weight.detach().clone()
    B, xs, es = torch.randn(2, 3), [torch.randn(6, 5) for _ in range(2)], [torch.randn(6, 2) for _ in range(2)]
    learner = rules.Learner(block, 0, rule="dfa", is_head=False, B=B, out_shape=(3,), seed=0, stash_weights=stash)
    opt = torch.optim.SGD(block.parameters(), lr=1.0)
    learner.forward(0, xs[0])
    learner.forward(1, xs[1])
    rules.update([learner], opt, 0, es[0], 0.1)
    rules.update([learner], opt, 1, es[1], 0.1)
    g0, g1 = es[0] @ B, es[1] @ B
    A1, C1 = A0 - 0.1 * (g0 @ C0).T @ xs[0], C0 - 0.1 * g0.T @ (xs[0] @ A0.T)
    through = C0 if stash else C1  # the second layer's weights in step 1's backward
    A2, C2 = A1 - 0.1 * (g1 @ through).T @ xs[1], C1 - 0.1 * g1.T @ (xs[1] @ A0.T)  # forward 1 saw A0
    torch.testing.assert_close(block[0].weight.detach(), A2)
    torch.testing.assert_close(block[1].weight.detach(), C2)


def test_identity_feedback_needs_an_error_as_wide_as_every_block():
    from dfa_async.config import ConfigError

    cfg = small_config(feedback={"init": "identity"})  # e has 10 classes, the blocks 32 features
    with pytest.raises(ConfigError, match=r"feedback.init: identity needs e as wide as every hidden block \(e has "
                                          r"10 features, the blocks \[32, 32\]\)"):
        Plan(cfg, (1, 8, 8), 10, 4, 4)
    B = feedback.matrix(0, [6, 6], 6, "identity", "none")
    assert torch.equal(B, torch.eye(6) * 6 ** 0.5)  # the orthogonal draw's scale, unrotated
