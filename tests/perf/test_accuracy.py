"""Time to accuracy: every mode trains until the target test accuracy, on real Ray workers."""
import json

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
