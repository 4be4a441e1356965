"""A stage's own part of the schedule, without Ray: one worker holding every block runs windows cut
anywhere and ends with the reference's weights, losses and test metrics."""
import torch

from dfa_async import data
from dfa_async.reference import LocalPipeline
from dfa_async.runtime.worker import StageWorker
from dfa_async.stage import Plan

from conftest import small_config


def test_one_worker_running_windows_equals_the_reference():
    cfg = small_config(model={"widths": [24, 24], "dropout_hidden": 0.1, "batchnorm": True},
                       runtime={"depth": 3}, checkpoint={"every": 7})
    ds = data.load(cfg.data, cfg.train.seed)
    plan = Plan(cfg, ds.shape, ds.classes, total_steps=16, steps_per_epoch=16)
    ref = LocalPipeline(plan, None, ds)
    worker = StageWorker(plan, list(range(plan.num_blocks)), 0, 1, len(ds.x_test), x_train=ds.x_train.numpy(),
                         y_train=ds.y_train.numpy(), x_test=ds.x_test.numpy(), y_test=ds.y_test.numpy())
    ref_losses = ref.submit(0, 16).losses
    losses = [x for a, b in [(0, 5), (5, 6), (6, 13), (13, 16)] for x in worker.run(a, b)["losses"]]
    assert losses == ref_losses
    a, b = ref.model().state_dict(), {}
    for m in worker.modules().items():
        b.update({f"{m[0]}.{k}": v for k, v in m[1].state_dict().items()})
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    correct, total, n = worker.evaluate()
    assert (correct / n, total / n) == ref.evaluate()


def test_rings_hold_depth_plus_two_of_the_largest_message_within_bounds():
    cfg = small_config(runtime={"depth": 2})
    plan = Plan(cfg, (1, 8, 8), 10, total_steps=4, steps_per_epoch=4)
    worker = StageWorker(plan, [0], 0, 3, 128, x_train=torch.zeros(256, 1, 8, 8).numpy(),
                         x_test=torch.zeros(128, 1, 8, 8).numpy())
    assert worker.ring_bytes() == 1 << 20  # small messages: the 1 MiB floor
    cfg = small_config(model={"widths": [4096]}, runtime={"depth": 4}, train={"eval_batch_size": 1000})
    plan = Plan(cfg, (1, 8, 8), 10, total_steps=4, steps_per_epoch=4)
    assert StageWorker(plan, [0], 0, 2, 128, x_train=torch.zeros(256, 1, 8, 8).numpy(),
                       x_test=torch.zeros(128, 1, 8, 8).numpy()).ring_bytes() == 64 << 20  # the cap
