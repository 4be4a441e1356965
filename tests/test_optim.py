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


@pytest.mark.parametrize("cfg", [OptimConfig(name="sgd"), OptimConfig(name="sgd", fused=False),
                                 OptimConfig(name="sgd", momentum=0.0, weight_decay=1e-3),
                                 OptimConfig(name="sgd", nesterov=True, weight_decay=1e-3),
                                 OptimConfig(name="adam"), OptimConfig(name="adam", fused=False, weight_decay=1e-2)],
                         ids=["sgd", "sgd-loop", "sgd-plain-wd", "sgd-nesterov", "adam", "adam-loop"])
def test_lean_step_is_the_optimizers_own_step(cfg):
    """optim.step skips torch.optim's wrappers only: the same parameters and state, bit for bit, from the
    first step (state created) on, with the learning rate changed between steps; and no profiler range."""
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(*s)) for s in [(16, 8), (8,)]]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    oa, ob = optim.make(a, cfg), optim.make(b, cfg)
    for i in range(4):
        for pa, pb in zip(a, b):
            pa.grad = torch.randn_like(pa)
            pb.grad = pa.grad.clone()
        for o in (oa, ob):
            o.param_groups[0]["lr"] = cfg.lr / (i + 1)
        with torch.profiler.profile() as prof:
            optim.step(oa)
        ob.step()
        assert not [e for e in prof.events() if e.name.startswith("Optimizer.step")]
        for pa, pb in zip(a, b):
            assert torch.equal(pa, pb)
    sa, sb = oa.state_dict(), ob.state_dict()
    assert sa["param_groups"] == sb["param_groups"] and sa["state"].keys() == sb["state"].keys()
    for i in sa["state"]:
        assert sa["state"][i].keys() == sb["state"][i].keys()
        for k, v in sa["state"][i].items():
            assert torch.equal(v, sb["state"][i][k]) if torch.is_tensor(v) else v == sb["state"][i][k]


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
