"""The driver end to end on the local backend: log, evaluation, alignment, checkpoints, resume."""
import math

import pytest
import torch

from dfa_async import checkpoint, data, feedback, model as models, probe, runlog, train
from dfa_async.config import ConfigError

from conftest import poison, small_config


def test_train_writes_log_checkpoint_and_final_model(tmp_path):
    cfg = small_config(train={"epochs": 2}, alignment={"every": 5, "probe_size": 32})
    res = train(cfg, tmp_path / "run")
    assert res.steps == 32
    recs = runlog.read(tmp_path / "run" / "events.msgpack")
    kinds = [r["kind"] for r in recs]
    assert kinds[0] == "config" and kinds[-1] == "done"
    evals = [r for r in recs if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [1.0, 2.0]
    assert evals[-1]["test_accuracy"] == res.test_accuracy
    aligns = [r for r in recs if r["kind"] == "align"]
    assert [r["step"] for r in aligns] == [4, 9, 14, 19, 24, 29, 31]
    assert sum(r["kind"] == "train" for r in recs) == 32
    # The final model is a plain state_dict of the nn.Sequential: its test accuracy is the one reported,
    # and the last probe (after the last update) measured it.
    sd = torch.load(tmp_path / "run" / "final_model.pt", weights_only=True)
    net = models.build(cfg, (1, 8, 8), 10)
    net.load_state_dict(sd)
    ds = data.load(cfg.data, cfg.train.seed)
    with torch.no_grad():
        assert (net.eval()(ds.x_test).argmax(1) == ds.y_test).float().mean().item() == pytest.approx(res.test_accuracy)
    dims = [math.prod(s) for s in models.output_shapes(net, (1, 8, 8))[:-1]]
    Bs = [feedback.matrix(k, dims, 10, cfg.feedback.init, cfg.feedback.normalization, cfg.train.seed)
          for k in range(len(dims))]
    want = probe.alignment(net.train(), Bs, ds.x_train[:32], ds.y_train[:32], seed=cfg.train.seed)
    assert [b["cos_mean"] for b in aligns[-1]["blocks"]] == pytest.approx([b["cos_mean"] for b in want], abs=1e-9)
    assert [b["update_angle"] for b in aligns[-1]["blocks"]] == pytest.approx([b["update_angle"] for b in want],
                                                                              abs=1e-6)
    assert (tmp_path / "run" / "config.toml").exists()


def test_dfa_beats_shallow_on_synthetic(tmp_path):
    base = dict(train={"epochs": 4}, optim={"name": "adam", "lr": 0.003}, data={"n_train": 1024})
    dfa = train(small_config(**base), tmp_path / "dfa")
    shallow = train(small_config(**base, feedback={"rule": "shallow"}), tmp_path / "shallow")
    assert dfa.test_accuracy > shallow.test_accuracy + 0.02


def final_params(run_dir):
    return torch.load(run_dir / "final_model.pt", weights_only=True)


def test_resume_from_checkpoint_equals_a_straight_run(tmp_path):
    common = dict(train={"epochs": 2}, runtime={"depth": 2}, model={"dropout_hidden": 0.1},
                  optim={"schedule": "cosine"}, checkpoint={"every": 7, "keep": 10})
    straight = train(small_config(**common), tmp_path / "straight")
    # Stop after step 13: a run with max_steps would change the lr schedule, so cut the run dir instead.
    part = tmp_path / "part"
    train(small_config(**common), part)
    for p in (part / "checkpoints").glob("step-*.pt"):
        if checkpoint._step(p) > 13:
            p.unlink()
    (part / "final_model.pt").unlink()
    resumed = train(small_config(**common), part)
    a, b = final_params(tmp_path / "straight"), final_params(part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.test_accuracy == straight.test_accuracy
    kinds = [r["kind"] for r in runlog.read(part / "events.msgpack")]
    assert "resume" in kinds


def test_divergence_stops_with_a_clear_error(tmp_path):
    cfg = small_config(optim={"lr": 1e30, "momentum": 0.0}, model={"activation": "relu"})
    with pytest.raises(FloatingPointError, match="lower optim.lr"):
        train(cfg, tmp_path / "nan")
    errors = runlog.read(tmp_path / "nan" / "events.msgpack", "error")
    assert errors and "loss is" in errors[0]["message"]


def test_users_own_sequential(tmp_path):
    seq = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 24), torch.nn.ReLU(),
                              torch.nn.Linear(24, 10))
    blocks = models.from_sequential(seq, [3])
    assert len(blocks) == 2
    cfg = small_config()
    cfg.runtime.blocks_per_stage = [1, 1]  # counts the user's blocks, checked by train()
    train(cfg, tmp_path / "own", model=blocks)
    sd = final_params(tmp_path / "own")
    assert set(sd) == {"0.1.weight", "0.1.bias", "1.0.weight", "1.0.bias"}
    assert not torch.equal(sd["0.1.weight"], blocks[0][1].weight)  # the hidden block learned
    with pytest.raises(ValueError, match="starts"):
        models.from_sequential(seq, [0, 3])


def test_checkpoints_are_kept_and_a_corrupt_one_is_skipped(tmp_path):
    cfg = small_config(train={"epochs": 2}, checkpoint={"every": 5, "keep": 2})
    train(cfg, tmp_path / "c")
    names = sorted(p.name for p in (tmp_path / "c" / "checkpoints").iterdir())
    assert names == ["step-00000029.pt", "step-00000031.pt"]
    (tmp_path / "c" / "checkpoints" / "step-00000031.pt").write_bytes(b"garbage")
    path, state = checkpoint.latest(tmp_path / "c")
    assert path.name == "step-00000029.pt" and state["step"] == 29


def test_a_finished_run_is_not_overwritten_and_a_crash_after_the_last_checkpoint_finishes(tmp_path):
    res = train(small_config(), tmp_path / "r")
    before = (tmp_path / "r" / "events.msgpack").read_bytes()
    with pytest.raises(ConfigError, match="finished run"):
        train(small_config(), tmp_path / "r")
    assert (tmp_path / "r" / "events.msgpack").read_bytes() == before
    # Cut the log just before `done` and drop the final model: a crash after the last checkpoint.
    recs = runlog.read(tmp_path / "r" / "events.msgpack")
    import msgpack
    (tmp_path / "r" / "events.msgpack").write_bytes(before[:len(before) - 12 - len(msgpack.packb(recs[-1]))])
    (tmp_path / "r" / "final_model.pt").unlink()
    again = train(small_config(), tmp_path / "r")
    assert again.test_accuracy == res.test_accuracy and (tmp_path / "r" / "final_model.pt").exists()


# -- non-finite steps ------------------------------------------------------------------------------------------
def poisoned(monkeypatch):
    return poison(monkeypatch, 37, 256, 16, 32)


def test_skip_drops_the_steps_whose_error_is_not_finite(tmp_path, monkeypatch):
    steps = poisoned(monkeypatch)
    assert len(steps) == 2  # one per epoch
    cfg = small_config(train={"epochs": 2, "on_nonfinite": "skip"}, runtime={"depth": 2, "blocks_per_stage": [2, 1]},
                       checkpoint={"every": 10})
    res = train(cfg, tmp_path / "r")
    assert [r["step"] for r in runlog.read(tmp_path / "r" / "events.msgpack", "skip")] == steps
    sd = final_params(tmp_path / "r")
    assert all(torch.isfinite(v).all() for v in sd.values()) and res.test_accuracy > 0.1
    stale = [k for r in runlog.read(tmp_path / "r" / "events.msgpack", "timeline") for o, k in
             zip(r["op"], r["staleness"]) if o == "skip"]
    assert len(stale) == 2 * len(steps)  # both stages skipped both steps


def test_stop_names_the_step_and_the_last_good_checkpoint(tmp_path, monkeypatch):
    steps = poisoned(monkeypatch)
    cfg = small_config(train={"epochs": 2}, checkpoint={"every": 4})
    with pytest.raises(FloatingPointError, match=rf"loss is nan at step {steps[0]}; kept: checkpoint "
                                                 rf"step-\d+\.pt .*train.on_nonfinite = skip"):
        train(cfg, tmp_path / "r")
    for p in (tmp_path / "r" / "checkpoints").glob("step-*.pt"):
        state = checkpoint.load(p)
        assert checkpoint.nonfinite(state["blocks"]) is None


def test_eval_every_evaluates_between_epoch_ends_with_the_wall_time_so_far(tmp_path):
    from dfa_async import runlog

    res = train(small_config(train={"epochs": 1, "eval_every": 5}), tmp_path / "r")  # 16 steps of 16
    evals = runlog.read(tmp_path / "r" / "events.msgpack", "eval")
    assert [r["step"] for r in evals] == [4, 9, 14, 15] and res.steps == 16
    assert all(0 < a["seconds"] <= b["seconds"] for a, b in zip(evals, evals[1:]))


def test_the_memory_check_counts_every_replicas_copy(monkeypatch):
    """Each replica holds the whole stage's weights, gradients and optimizer state: R copies must fit."""
    import psutil

    from dfa_async.run import check_memory
    from dfa_async.stage import Plan

    def plan(replicas):
        cfg = small_config(runtime={"backend": "ray", "replicas": replicas}, optim={"name": "sgd"})
        return Plan(cfg, (1, 8, 8), 10, 16, 16)
    need = 3 * 4 * sum(p.numel() for p in plan(1).shell().parameters())  # weights, gradients, momentum
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("Memory", (), {"available": int(1.5 * need)})())
    check_memory(plan(1))
    with pytest.raises(ConfigError, match=r"GiB x 2 replicas, and this machine has .* use fewer replicas"):
        check_memory(plan(2))
