"""The run directory as a durable record (rundir.py): another run's directory is refused, the settings
live in every checkpoint, a resume says what changed, a failed start leaves the directory reusable."""
import pytest
import torch

from dfa_async import checkpoint, runlog, train
from dfa_async.config import ConfigError

from conftest import small_config


def test_run_dir_of_another_config_is_refused(tmp_path):
    train(small_config(), tmp_path / "r")
    before = (tmp_path / "r" / "events.msgpack").read_bytes()
    with pytest.raises(ConfigError, match="other settings"):
        train(small_config(optim={"lr": 0.5}), tmp_path / "r")
    assert (tmp_path / "r" / "events.msgpack").read_bytes() == before


def stopped_after_step_20(cfg, run_dir):
    """A run of `cfg` (checkpoints every 5 steps) whose driver was lost after step 20: the later checkpoints
    never reached the disk."""
    train(cfg, run_dir)
    for p in (run_dir / "checkpoints").glob("step-*.pt"):
        if checkpoint._step(p) > 20:
            p.unlink()


def test_settings_live_in_every_checkpoint_so_a_missing_config_toml_hides_nothing(tmp_path):
    cfg = small_config(train={"epochs": 2}, checkpoint={"every": 5, "keep": 10})
    stopped_after_step_20(cfg, tmp_path / "r")
    (tmp_path / "r" / "config.toml").unlink()
    (tmp_path / "r" / "events.msgpack").unlink()  # the checkpoint is all that is left
    with pytest.raises(ConfigError, match=r"other settings \(optim.lr: 0.001 -> 0.5\)"):
        train(small_config(train={"epochs": 2}, checkpoint={"every": 5, "keep": 10}, optim={"lr": 0.5}),
              tmp_path / "r")


def test_a_resume_may_change_where_it_runs_and_says_what_changed(tmp_path):
    common = dict(train={"epochs": 2}, checkpoint={"every": 5, "keep": 10})
    straight = train(small_config(**common), tmp_path / "straight")
    train(small_config(**common), tmp_path / "r")
    for p in (tmp_path / "r" / "checkpoints").glob("step-*.pt"):
        if checkpoint._step(p) > 20:
            p.unlink()
    (tmp_path / "r" / "final_model.pt").unlink()
    resumed = train(small_config(checkpoint={"every": 5, "keep": 10}, runtime={"blocks_per_stage": [2, 1]},
                                 train={"epochs": 2, "log_every": 3}), tmp_path / "r")
    assert resumed.test_accuracy == straight.test_accuracy
    (resume,) = runlog.read(tmp_path / "r" / "events.msgpack", "resume")
    assert resume["checkpoint"] == "step-00000019.pt"
    assert resume["changed"] == ["train.log_every: 1 -> 3", "runtime.blocks_per_stage: [] -> [2, 1]"]


def test_a_failed_start_leaves_the_directory_reusable(tmp_path):
    bad = small_config(runtime={"device": "cuda"})  # refused when the pipeline is made (no GPU here)
    if torch.cuda.is_available():
        pytest.skip("this process has a GPU")
    with pytest.raises(ConfigError, match="runtime.device: cuda"):
        train(bad, tmp_path / "r")
    assert (tmp_path / "r" / "events.msgpack").exists()
    res = train(small_config(), tmp_path / "r")  # the same run on the CPU (device does not change learning)
    assert res.steps == 16
    kinds = [r["kind"] for r in runlog.read(tmp_path / "r" / "events.msgpack")]
    assert kinds[:2] == ["config", "resume"] and kinds.count("config") == 1 and kinds[-1] == "done"


def test_a_fallback_to_an_older_checkpoint_is_logged_and_printed_and_temporaries_go(tmp_path, capsys):
    cfg = small_config(train={"epochs": 2}, checkpoint={"every": 5, "keep": 3})
    train(cfg, tmp_path / "r")
    folder = tmp_path / "r" / "checkpoints"
    newest = folder / "step-00000031.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    (folder / ".step-00000035.pt.x1y2").write_bytes(b"\0" * 15_000)  # an interrupted write
    (tmp_path / "r" / "final_model.pt").unlink()
    capsys.readouterr()
    train(cfg, tmp_path / "r")
    err = capsys.readouterr().err
    assert "warning: checkpoint step-00000031.pt does not load" in err and "resuming from step-00000029.pt" in err
    recs = runlog.read(tmp_path / "r" / "events.msgpack")
    skipped = [r for r in recs if r["kind"] == "checkpoint_skipped"]
    assert skipped[0]["path"] == "step-00000031.pt" and skipped[0]["resumed_from"] == "step-00000029.pt"
    assert [r["files"] for r in recs if r["kind"] == "cleaned"] == [["checkpoints/.step-00000035.pt.x1y2"]]
    assert not (folder / ".step-00000035.pt.x1y2").exists()


def test_a_learning_rate_edited_into_config_toml_is_refused_in_one_line(tmp_path):
    cfg = small_config(train={"epochs": 2}, checkpoint={"every": 5, "keep": 10})
    stopped_after_step_20(cfg, tmp_path / "r")
    toml = tmp_path / "r" / "config.toml"
    toml.write_text(toml.read_text().replace("lr = 0.001", "lr = 0.01"))
    with pytest.raises(ConfigError, match=r"its config.toml was edited after the run began \(optim.lr: 0.001 -> "
                                          r"0.01\); .* start a new run") as err:
        train(cfg, tmp_path / "r")
    assert "\n" not in str(err.value)


def test_a_longer_run_resumes_with_the_new_length_and_logs_it(tmp_path):
    """train.max_steps raised after the run ended early: it goes on from its checkpoint to the new end, the
    change is in the `resume` record and in config.toml, and a shorter length is refused."""
    short = small_config(train={"epochs": 4, "max_steps": 20}, checkpoint={"every": 5, "keep": 10})
    train(short, tmp_path / "r")
    longer = small_config(train={"epochs": 4, "max_steps": 40}, checkpoint={"every": 5, "keep": 10})
    res = train(longer, tmp_path / "r")
    assert res.steps == 40
    (resume,) = runlog.read(tmp_path / "r" / "events.msgpack", "resume")
    assert resume["checkpoint"] == "step-00000019.pt" and resume["changed"] == ["train.max_steps: 20 -> 40"]
    assert "max_steps = 40" in (tmp_path / "r" / "config.toml").read_text()
    assert runlog.read(tmp_path / "r" / "events.msgpack", "train")[-1]["step"] == 39
    shorter = small_config(train={"epochs": 4, "max_steps": 30}, checkpoint={"every": 5, "keep": 10})
    with pytest.raises(ConfigError, match="has reached step 40, beyond the 30 steps"):
        train(shorter, tmp_path / "r")


def test_a_run_whose_checkpoints_were_deleted_is_not_restarted_from_step_0_silently(tmp_path):
    cfg = small_config(train={"epochs": 2}, checkpoint={"every": 5, "keep": 10})
    stopped_after_step_20(cfg, tmp_path / "r")
    for p in (tmp_path / "r" / "checkpoints").glob("step-*.pt"):
        p.unlink()
    with pytest.raises(ConfigError, match=r"its log records checkpoints up to step-00000031.pt, but checkpoints/ "
                                          r"holds none; restore them"):
        train(cfg, tmp_path / "r")
