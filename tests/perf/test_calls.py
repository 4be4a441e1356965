"""The per-op Ray-call baseline of the bench carries out the same schedule: the reference's weights."""
import pytest
import torch

from dfa_async import data
from dfa_async.perf import modes
from dfa_async.perf.calls import CallsPipeline
from dfa_async.reference import LocalPipeline
from dfa_async.stage import Plan

from conftest import small_config

pytestmark = pytest.mark.usefixtures("ray_instance")


@pytest.mark.parametrize("depth", [1, 3])
def test_per_op_calls_end_with_the_reference_weights(depth):
    cfg = small_config(model={"widths": [24, 24], "dropout_hidden": 0.1}, runtime={"depth": depth})
    ds = data.load(cfg.data, cfg.train.seed)
    plan = Plan(cfg, ds.shape, ds.classes, total_steps=16, steps_per_epoch=16)
    ref = LocalPipeline(plan, None, ds)
    calls = CallsPipeline(plan, ds)
    try:
        modes.drive(ref, 0, 16, 5)
        modes.drive(calls, 0, 16, 5)
        a, b = ref.model().state_dict(), calls.model().state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    finally:
        calls.close()
