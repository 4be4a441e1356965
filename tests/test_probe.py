"""The alignment probe through stages equals the single-process measure on the assembled model."""
import math

import pytest
import torch

from dfa_async import data, feedback, probe
from dfa_async.reference import LocalPipeline
from dfa_async.stage import Plan

from conftest import small_config

CNN = dict(model={"kind": "cnn", "channels": [4, 6], "widths": [12], "batchnorm": True, "dropout_hidden": 0.2},
           data={"shape": [1, 12, 12], "n_train": 128, "n_test": 32})
MLP = dict(model={"widths": [24, 20], "dropout_hidden": 0.3}, data={"n_train": 128, "n_test": 32})


def oracle(plan, model, x, y, mode="train"):
    cfg = plan.cfg
    dims = [math.prod(s) for s in plan.out_shapes[:-1]]
    Bs = [feedback.matrix(k, dims, plan.classes, cfg.feedback.init, cfg.feedback.normalization, cfg.train.seed)
          for k in range(len(dims))]
    return probe.alignment(model, Bs, x, y, cfg.feedback.error_scale, seed=cfg.train.seed, mode=mode)


@pytest.mark.parametrize("net,partition", [(MLP, None), (MLP, [[0], [1], [2]]), (MLP, [[0, 1], [2]]),
                                           (CNN, [[0], [1, 2], [3]])], ids=["mlp-1", "mlp-3", "mlp-2", "cnn-3"])
@pytest.mark.parametrize("scale,how", [("mean", ("train", "train")), ("sum", ("train", "train")),
                                       ("paper", ("test", "eval"))])
def test_stagewise_probe_equals_the_single_process_measure(net, partition, scale, how):
    cfg = small_config(**net, feedback={"error_scale": scale}, runtime={"depth": 2})
    ds = data.load(cfg.data, cfg.train.seed)
    plan = Plan(cfg, ds.shape, ds.classes, total_steps=8, steps_per_epoch=8)
    pipe = LocalPipeline(plan, partition, ds)
    pipe.submit(0, 6)  # trained weights, two steps still in flight
    buffers = {k: v.clone() for k, v in pipe.model().state_dict().items()}
    split, mode = how
    got = pipe.align(30, split, mode)
    x, y = (ds.x_train, ds.y_train) if split == "train" else (ds.x_test, ds.y_test)
    want = oracle(plan, pipe.model(), x[:30], y[:30], mode)
    assert [b["block"] for b in got] == list(range(plan.num_blocks))  # the head too
    assert [sorted(b) for b in got] == [sorted(b) for b in want]
    for g, w in zip(got, want):
        for key in g:
            assert g[key] == pytest.approx(w[key], abs=1e-5), (g["block"], key)
    assert got[-1]["cos_mean"] == pytest.approx(1.0, abs=1e-6)  # the head learns from its true gradient
    assert abs(got[0]["cos_mean"]) < 0.99 and got[0]["update_angle"] > 1  # DFA, not BP against itself
    # The probe ran on copies: batchnorm statistics and weights are untouched.
    after = pipe.model().state_dict()
    assert all(torch.equal(buffers[k], after[k]) for k in buffers)


@pytest.mark.parametrize("init", ["identity", "wishart"])
def test_on_a_gpt_the_last_layer_under_the_hidden_error_is_aligned_by_a_positive_definite_feedback(tmp_path, init):
    """error_at = hidden sends dL/dh at the transformer's output, which *is* the last layer's true gradient
    (the head follows it): with B = I its cosine is 1 at every token; earlier layers' are not. With a
    wishart B (symmetric positive definite) every token's cosine is at least Kantorovich's bound
    2 sqrt(k) / (1 + k), k = B's condition number, so their mean is too."""
    from dfa_async import config

    path = tmp_path / "t.txt"
    path.write_text("".join(f"{i * 7919 % 1009} the quick brown fox; " for i in range(200)))
    cfg = config.load(None, ["model.kind=gpt", "data.name=text", f"data.path={path}", "model.n_layer=3",
                             "model.n_head=2", "model.n_embd=16", "model.block_size=12", "train.batch_size=4",
                             "train.epochs=0", "train.max_steps=5", "runtime.backend=local", "feedback.error_at=hidden",
                             f"feedback.init={init}"])
    ds = data.for_run(cfg)
    pipe = LocalPipeline(Plan(cfg, ds.shape, ds.classes, 5, 5, window=ds.window), None, ds)
    pipe.submit(0, 3)
    blocks = pipe.align(6)
    if init == "identity":
        assert blocks[2]["cos_mean"] == pytest.approx(1.0, abs=1e-9) and blocks[2]["cos_std"] < 1e-9
        assert blocks[0]["cos_mean"] < 0.999
    else:
        lam = torch.linalg.eigvalsh(feedback.matrix(2, [16] * 3, 16, "wishart", "paper", 0).double())
        k = (lam.max() / lam.min()).item()
        assert 2 * k ** 0.5 / (1 + k) <= blocks[2]["cos_mean"] < 0.999
