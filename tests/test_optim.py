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
