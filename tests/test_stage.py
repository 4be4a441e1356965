"""A stage: its optimizer state is saved per block, so a checkpoint loads into any placement and the run
goes on as if nothing had moved."""
import torch

from dfa_async import data
from dfa_async.reference import LocalPipeline
from dfa_async.stage import Plan

from conftest import small_config


def params(pipe):
    return list(pipe.model().state_dict().values())


def test_state_saved_on_one_placement_continues_identically_on_another():
    cfg = small_config(optim={"name": "adam"}, model={"batchnorm": True, "dropout_hidden": 0.1},
                       runtime={"depth": 2})
    ds = data.load(cfg.data, cfg.train.seed)
    plan = Plan(cfg, ds.shape, ds.classes, total_steps=16, steps_per_epoch=8)  # drained after step 7
    a = LocalPipeline(plan, [[0, 1], [2]], ds)
    a.submit(0, 8)
    state = a.state()
    assert set(state) == {"0", "1", "2"} and all("optim" in state[k] for k in state)
    b = LocalPipeline(plan, [[0], [1, 2]], ds)
    b.load_state(state)
    a.submit(8, 16)
    b.submit(8, 16)
    assert all(torch.equal(x, y) for x, y in zip(params(a), params(b)))


def test_a_stage_steps_one_optimizer_over_all_its_blocks():
    cfg = small_config()
    plan = Plan(cfg, (1, 8, 8), 10, total_steps=4, steps_per_epoch=4)
    (stage,) = LocalPipeline(plan).stages
    assert len(stage.opt.param_groups) == 1 and len(stage.opt.param_groups[0]["params"]) == 6
    assert stage.opt.defaults["fused"] is True


MEASURE = """
import json, sys
import psutil
sys.path.insert(0, sys.argv[1])
from conftest import small_config
from dfa_async.process import keep_freed_memory
from dfa_async.stage import Plan, Stage

keep_freed_memory()  # freed blocks stay resident: building the whole model and keeping a part would show
cfg = small_config(model={"widths": [2048] * 4}, data={"shape": [2, 32, 32]}, runtime={"blocks_per_stage": [1, 1, 1, 2]},
                   optim={"name": "sgd", "momentum": 0.0})
plan = Plan(cfg, (2, 32, 32), 10, total_steps=1, steps_per_epoch=1)
me = psutil.Process()
before = me.memory_info().rss
stage = Stage(plan, plan.partition()[1])
mid = me.memory_info().rss
whole = plan.build()
print(json.dumps({"stage": mid - before, "whole": me.memory_info().rss - mid}))
"""


def test_a_stage_allocates_its_own_blocks_only():
    """A 4-stage model of four 2048 x 2048 blocks (and a small head): stage 1 holds a quarter of the
    parameters, and the memory it takes when built is about a quarter of what the whole model takes."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).parent
    out = subprocess.run([sys.executable, "-c", MEASURE, str(tests)], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    assert 0.18 < got["stage"] / got["whole"] < 0.35, got


def test_bfloat16_blocks_pass_on_bfloat16_and_the_error_stays_float32(tmp_path):
    """train.dtype = bfloat16: every hidden block's output (what a link carries) is bfloat16, the head's
    logits and e float32, the weights float32; the update still reaches every block."""
    from dfa_async import config, data
    from dfa_async.stage import Plan, Stage

    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question. " * 40)
    cfg = config.load(None, ["model.kind=gpt", "data.name=text", f"data.path={text}", "model.n_layer=2",
                             "model.n_head=2", "model.n_embd=16", "model.block_size=8", "train.batch_size=4",
                             "train.epochs=0", "train.max_steps=4", "runtime.backend=local", "train.dtype=bfloat16",
                             "feedback.error_at=hidden"])
    ds = data.for_run(cfg)
    plan = Plan(cfg, ds.shape, ds.classes, 4, 4, window=ds.window)
    first, head = Stage(plan, [0, 1]), Stage(plan, [2])
    batches = data.batches(len(ds.x_train), cfg, ds.window)
    h = first.forward(0, batches.inputs(ds.x_train, 0))
    loss, e = head.forward(0, h, batches.labels(ds.y_train, 0))
    assert h.dtype == torch.bfloat16 and h.shape == (4, 8, 16)
    assert e.dtype == torch.float32 and e.shape == (4, 8, 16) and loss.dtype == torch.float32
    before = [p.detach().clone() for s in (first, head) for learner in s.learners for p in learner.block.parameters()]
    first.update(0, e)
    head.update(0, e)
    after = [p for s in (first, head) for learner in s.learners for p in learner.block.parameters()]
    assert all(p.dtype == torch.float32 for p in after)
    assert all(not torch.equal(a, b) for a, b in zip(before, after) if a.dim() >= 2)


def test_weight_prediction_forwards_at_the_weights_the_update_in_flight_will_leave():
    """D = 2: forward 0, forward 1, update 0, forward 2. Step 1's update is in flight at forward 2, so the
    stage runs at w1 - lr_1 buf (SGD's momentum buffer after update 0): a plain copy of the model at those
    weights gives the same loss, and one at w1 another. The real weights stay w1."""
    import torch.nn.functional as F

    from dfa_async import optim

    cfg = small_config(optim={"name": "sgd", "momentum": 0.9, "lr": 0.5}, runtime={"depth": 2, "weight_prediction": True})
    plan = Plan(cfg, (1, 8, 8), 10, total_steps=16, steps_per_epoch=16)
    (stage,) = LocalPipeline(plan).stages
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(3, 16, 1, 8, 8, generator=g), torch.randint(0, 10, (3, 16), generator=g)
    _, e0 = stage.forward(0, xs[0], ys[0])
    stage.forward(1, xs[1], ys[1])  # nothing stepped yet: nothing to predict from
    stage.update(0, e0)
    params = stage.opt.param_groups[0]["params"]
    w1 = [p.detach().clone() for p in params]
    lr1 = optim.lr_at(cfg.optim, 1, 16, 16)
    twin = plan.build()
    with torch.no_grad():
        for p, q in zip(twin.parameters(), params):
            p.copy_(q - lr1 * stage.opt.state[q]["momentum_buffer"])
        want = F.cross_entropy(twin(xs[2]), ys[2])
        for p, q in zip(twin.parameters(), params):
            p.copy_(q)
        unpredicted = F.cross_entropy(twin(xs[2]), ys[2])
    loss, _ = stage.forward(2, xs[2], ys[2])
    torch.testing.assert_close(loss, want)
    assert abs(loss.item() - unpredicted.item()) > 1e-4
    assert all(torch.equal(p.detach(), w) for p, w in zip(params, w1))
