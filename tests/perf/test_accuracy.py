"""Time to accuracy: every mode trains until the target test accuracy, on real Ray workers."""
import json
import math

import pytest

from dfa_async.perf import accuracy

from conftest import small_config


def test_every_mode_reaches_the_target_and_reports_steps_and_seconds(tmp_path):
    cfg = small_config(data={"n_train": 640, "n_test": 256}, train={"epochs": 6, "batch_size": 24},
                       optim={"name": "sgd", "lr": 0.05, "momentum": 0.9}, runtime={"backend": "ray"})
    records = accuracy.run(cfg, 0.4, depths=[2], eval_every=5, microbatches=4, out=tmp_path)
    assert [r["mode"] for r in records] == ["backprop", "reference-dfa", "dataplane-D2", "gpipe-M4", "1f1b-M4", "ddp"]
    for r in records:
        assert r["reached"] and r["last_accuracy"] >= 0.4, r
        assert r["steps"] % 5 == 0 and 0 < r["steps"] <= 156 and r["seconds"] > 0
    by = {r["mode"]: r for r in records}
    # Same minibatches and the same backprop: the pipelines reach it at the single process's step.
    assert by["gpipe-M4"]["steps"] == by["1f1b-M4"]["steps"] == by["backprop"]["steps"]
    saved = json.loads((tmp_path / "accuracy.json").read_text())
    assert saved["records"] == records and saved["meta"]["workers"] == 3
    assert "| dataplane-D2 | 3 | yes |" in (tmp_path / "accuracy.md").read_text()


def test_bad_settings_are_refused_before_anything_runs():
    with pytest.raises(ValueError, match="--to-accuracy: 97"):
        accuracy.run(small_config(), 97)
    with pytest.raises(ValueError, match="--microbatches: 2 with train.batch_size 16 on 3 workers"):
        accuracy.run(small_config(runtime={"backend": "ray"}), 0.5, microbatches=2)


@pytest.mark.slow
def test_time_to_a_validation_loss_on_a_gpt(tmp_path):
    """`bench --to-loss`: every mode trains the same GPT until its validation loss per token falls to the
    target; the baselines with a per-token loss, the stages' clipping and decoupled decay."""
    from dfa_async import config

    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question. " * 80)
    cfg = config.load(None, ["model.kind=gpt", "data.name=text", f"data.path={text}", "data.eval_windows=20",
                             "model.n_layer=3", "model.n_head=2", "model.n_embd=16", "model.block_size=8",
                             "train.batch_size=8", "train.epochs=0", "train.max_steps=60", "optim.name=adamw",
                             "optim.lr=0.01", "optim.weight_decay=0.1", "optim.clip_norm=1.0",
                             "runtime.blocks_per_stage=[2, 2]", "feedback.error_at=hidden", "feedback.init=identity"])
    records = accuracy.run(cfg, 2.5, depths=[2], eval_every=10, microbatches=2, out=tmp_path, loss=True)
    by = {r["mode"]: r for r in records}
    assert set(by) == {"backprop", "reference-dfa", "dataplane-D2", "gpipe-M2", "1f1b-M2", "ddp"}
    assert by["backprop"]["reached"] and by["backprop"]["best_loss"] <= 2.5
    chance = math.log(len(set(text.read_text())))  # a uniform guess over the characters
    assert all(r["best_loss"] < chance for r in records)  # every mode learns
    assert "Time to a test loss of 2.5 on text, a gpt of 3 layers" in (tmp_path / "accuracy.md").read_text()
