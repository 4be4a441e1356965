"""Checkpoints: never written with non-finite weights; a bad newest one is passed over with a reason;
temporaries of interrupted writes are cleaned; any bytes on disk load or are skipped, never raise."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from dfa_async import checkpoint


def state(step, value=1.0):
    return {"step": step, "blocks": {"0": {"block": {"weight": torch.full((3, 2), value)},
                                           "optim": {"momentum": [torch.zeros(3)]}, "updates": step}}}


def test_non_finite_state_is_never_written(tmp_path):
    checkpoint.save(tmp_path, 4, state(4), keep=3)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(FloatingPointError, match="block 0's weights are not finite after step 9"):
            checkpoint.save(tmp_path, 9, state(9, bad), keep=3)
    bad_optim = state(9)
    bad_optim["blocks"]["0"]["optim"]["momentum"][0][1] = float("nan")
    with pytest.raises(FloatingPointError):
        checkpoint.save(tmp_path, 9, bad_optim, keep=3)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000004.pt"]


def test_a_bad_newest_checkpoint_is_passed_over_with_its_reason(tmp_path):
    for t in (4, 9, 14):
        checkpoint.save(tmp_path, t, state(t), keep=5)
    folder = tmp_path / "checkpoints"
    data = (folder / "step-00000014.pt").read_bytes()
    (folder / "step-00000014.pt").write_bytes(data[:len(data) // 2])  # truncated
    torch.save({"weights": torch.ones(2)}, folder / "step-00000019.pt")  # loads, but not a checkpoint
    found, skipped = checkpoint.newest(tmp_path)
    assert found[0].name == "step-00000009.pt" and found[1]["step"] == 9
    assert [name for name, _ in skipped] == ["step-00000019.pt", "step-00000014.pt"]
    assert "not a dfa-async checkpoint" in skipped[0][1] and "does not load" in skipped[1][1]


def test_clean_removes_only_temporaries(tmp_path):
    checkpoint.save(tmp_path, 4, state(4), keep=5)
    folder = tmp_path / "checkpoints"
    (folder / ".step-00000009.pt.k2j3h").write_bytes(b"x" * 1000)
    (tmp_path / ".config.toml.tmp").write_text("half")
    assert sorted(checkpoint.clean(tmp_path)) == [".config.toml.tmp", "checkpoints/.step-00000009.pt.k2j3h"]
    assert [p.name for p in folder.iterdir()] == ["step-00000004.pt"]


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000), st.data())
def test_any_bytes_as_the_newest_checkpoint_load_or_are_skipped(tmp_path_factory, blob, data):
    run = tmp_path_factory.mktemp("run")
    checkpoint.save(run, 4, state(4), keep=5)
    good = (run / "checkpoints" / "step-00000004.pt").read_bytes()
    if data.draw(st.booleans()):  # a real checkpoint's prefix with noise after it
        blob = good[:data.draw(st.integers(0, len(good)))] + blob
    (run / "checkpoints" / "step-00000009.pt").write_bytes(blob)
    found, skipped = checkpoint.newest(run)
    assert found is not None
    assert (found[0].name, len(skipped)) in (("step-00000004.pt", 1), ("step-00000009.pt", 0))
