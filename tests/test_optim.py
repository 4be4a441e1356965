"""Optimizers: fused kernels by default, per-part state that round-trips, the learning-rate schedule."""
import pytest
import torch

from dfa_async import optim
from dfa_async.config import OptimConfig


def stepped(cfg, shapes, steps=3):
    ps = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    opt = optim.make(ps, cfg)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn_like(p)
        opt.step()
    return ps, opt


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_parts_of_the_state_round_trip(name):
    cfg = OptimConfig(name=name)
    ps, opt = stepped(cfg, [(3, 4), (4,), (2, 3), (2,)])
    parts = [optim.part_state(opt, 0, 2), optim.part_state(opt, 2, 2)]
    assert set(parts[1]["state"]) == {0, 1}
    fresh = optim.make([torch.nn.Parameter(p.detach().clone()) for p in ps], cfg)
    optim.load_part_states(fresh, parts)
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for k, v in a["state"][i].items():
            assert torch.equal(v, b["state"][i][k])
    with pytest.raises(ValueError, match="for 2 tensors, the stage has 4"):
        optim.load_part_states(fresh, parts[:1])



def test_fused_kernels_agree_with_the_loop_to_rounding():
    torch.manual_seed(0)
    for name in ("sgd", "adam"):
        a, _ = stepped(OptimConfig(name=name, fused=True), [(64, 32)], steps=0)
        b = [torch.nn.Parameter(a[0].detach().clone())]
        oa, ob = optim.make(a, OptimConfig(name=name, fused=True)), optim.make(b, OptimConfig(name=name, fused=False))
        assert oa.defaults["fused"] and not ob.defaults.get("fused")
        for _ in range(5):
            g = torch.randn(64, 32)
            a[0].grad, b[0].grad = g.clone(), g.clone()
            oa.step()
            ob.step()
        torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)


def test_cosine_schedule_ends_at_zero():
    cfg = OptimConfig(lr=0.1, schedule="cosine")
    assert optim.lr_at(cfg, 0, 100, 10) == pytest.approx(0.1)
    assert optim.lr_at(cfg, 100, 100, 10) == pytest.approx(0.0, abs=1e-12)


def test_warmup_cosine_is_nanogpts_schedule():
    """nanoGPT's get_lr: (it + 1) / (warmup + 1) of the rate during warmup, then cosine from lr to min_lr
    over the remaining steps (its lr_decay_iters = the run's length)."""
    import math

    cfg = OptimConfig(lr=1e-3, lr_min=1e-4, schedule="warmup_cosine", warmup_steps=100)
    for it in (0, 50, 99, 100, 101, 1000, 1999):
        want = 1e-3 * (it + 1) / 101 if it < 100 else \
            1e-4 + 0.5 * (1 + math.cos(math.pi * (it - 100) / (2000 - 100))) * (1e-3 - 1e-4)
        assert optim.lr_at(cfg, it, 2000, 1000) == pytest.approx(want, rel=1e-12)
    assert optim.lr_at(cfg, 2000, 2000, 1000) == pytest.approx(1e-4)


def test_adamw_decays_matrices_only_as_torchs_adamw_with_two_groups():
    from dfa_async import rules

    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.LayerNorm(4))
    twin = [p.detach().clone().requires_grad_() for p in block.parameters()]
    cfg = OptimConfig(name="adamw", lr=0.01, weight_decay=0.1, beta2=0.99, fused=False)
    opt = optim.make(list(block.parameters()), cfg)
    decay = optim.decayed(block.parameters(), cfg)
    assert len(decay) == 1  # the linear weight only
    ref = torch.optim.AdamW([{"params": [twin[0]], "weight_decay": 0.1},
                             {"params": twin[1:], "weight_decay": 0.0}], lr=0.01, betas=(0.9, 0.99))
    learner = rules.Learner(block, 0, rule="bp", is_head=True, B=None, out_shape=(4,), seed=0)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in twin]
        for p, g in zip(block.parameters(), grads):
            p.grad = g.clone()
        optim.before_step([learner.block], cfg, 0.01, decay)
        opt.step()
        for p, g in zip(twin, grads):
            p.grad = g.clone()
        ref.step()
    for p, q in zip(block.parameters(), twin):
        torch.testing.assert_close(p.detach(), q.detach())


def test_clip_norm_is_each_blocks_own():
    from dfa_async import rules

    blocks = [torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)]
    learners = [rules.Learner(b, k, rule="bp", is_head=k == 1, B=None, out_shape=(3,), seed=0)
                for k, b in enumerate(blocks)]
    for b, scale in zip(blocks, (10.0, 0.01)):
        for p in b.parameters():
            p.grad = torch.full_like(p, scale)
    optim.before_step([learner.block for learner in learners], OptimConfig(clip_norm=1.0), 0.1, [])
    norm = lambda b: torch.cat([p.grad.flatten() for p in b.parameters()]).norm().item()  # noqa: E731
    assert norm(blocks[0]) == pytest.approx(1.0, rel=1e-5)  # clipped to 1
    assert norm(blocks[1]) == pytest.approx(0.01 * 12 ** 0.5, rel=1e-5)  # below 1: untouched by the other's norm


@pytest.mark.parametrize("fused", [False, True])
def test_ahead_is_adams_next_step_from_its_state_alone(fused):
    """After three Adam steps on known gradients, m and v by their recursions (written out here), the
    displacement predicted at rate lr is lr m^/(sqrt(v^) + eps), bias-corrected at step 3, plus lr wd w
    for a decoupled-decay parameter; inside `predicted` the weights sit there, and come back bit for bit."""
    w = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
    v_only = torch.nn.Parameter(torch.tensor([3.0], dtype=torch.float64))  # not decayed
    opt = torch.optim.Adam([w, v_only], lr=0.1, betas=(0.8, 0.9), eps=1e-3, fused=fused)
    grads = [torch.tensor([1.0, 2.0, -1.0]), torch.tensor([0.5, -2.0, 0.0]), torch.tensor([-1.0, 1.0, 3.0])]
    m = v = torch.zeros(3, dtype=torch.float64)
    for g in grads:
        w.grad, v_only.grad = g.double(), torch.ones(1, dtype=torch.float64)
        opt.step()
        m, v = 0.8 * m + 0.2 * g.double(), 0.9 * v + 0.1 * g.double() ** 2
    lr, wd = 0.05, 0.3
    want = lr * (m / (1 - 0.8 ** 3)) / ((v / (1 - 0.9 ** 3)).sqrt() + 1e-3) + lr * wd * w.detach()
    before = [w.detach().clone(), v_only.detach().clone()]
    with optim.Prediction(opt, [w], wd).ahead(lr, 3):
        torch.testing.assert_close(w.detach(), before[0] - want, rtol=1e-12, atol=0)
        # the other parameter saw gradient 1 three times: m^ = v^ = 1, so it moves lr / (1 + eps), undecayed
        torch.testing.assert_close(v_only.detach(), before[1] - lr / (1 + 1e-3), rtol=1e-12, atol=0)
    assert torch.equal(w.detach(), before[0]) and torch.equal(v_only.detach(), before[1])


def test_ahead_of_sgd_is_the_momentum_buffer_and_nothing_before_a_first_step():
    w = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([w], lr=1.0, momentum=0.5)
    prediction = optim.Prediction(opt)
    with prediction.ahead(0.1, 0):  # no state yet: nothing to predict from
        assert torch.equal(w.detach(), torch.zeros(2))
    for g in ([1.0, 0.0], [0.0, 2.0]):
        w.grad = torch.tensor(g)
        opt.step()
    before = w.detach().clone()
    with prediction.ahead(0.1, 2):  # buffer: 0.5 * [1, 0] + [0, 2]
        torch.testing.assert_close(w.detach(), before - torch.tensor([0.05, 0.2]))
    assert torch.equal(w.detach(), before)
