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


def flip_a_byte_of(path, tensor):
    """Flip one byte inside `tensor`'s stored data (torch keeps tensor bytes as they are in the archive)."""
    raw = bytearray(path.read_bytes())
    at = raw.find(tensor.numpy().tobytes())
    assert at >= 0
    raw[at + 5] ^= 0x40
    path.write_bytes(bytes(raw))


def test_a_flipped_byte_inside_a_tensor_is_caught_by_the_checksum(tmp_path):
    for t in (4, 9):
        checkpoint.save(tmp_path, t, state(t, value=0.5 + t), keep=5)
    newest = tmp_path / "checkpoints" / "step-00000009.pt"
    assert torch.load(newest, weights_only=True)["sha256"] == checkpoint.digest(state(9, value=9.5))
    flip_a_byte_of(newest, torch.full((3, 2), 9.5))
    assert torch.load(newest, weights_only=True)["blocks"]["0"]["block"]["weight"].sum() != 6 * 9.5  # loads fine
    found, skipped = checkpoint.newest(tmp_path)
    assert found[1]["step"] == 4 and "sha256" not in found[1]
    assert skipped == [("step-00000009.pt", "is damaged (its contents do not match the checksum written with it)")]


def test_a_run_whose_newest_checkpoint_was_damaged_resumes_from_the_one_before_to_the_same_weights(tmp_path, capsys):
    from dfa_async import train

    from conftest import small_config

    cfg = small_config(train={"epochs": 2}, checkpoint={"every": 7, "keep": 10})
    straight = train(cfg, tmp_path / "straight")
    train(cfg, tmp_path / "r")
    folder = tmp_path / "r" / "checkpoints"
    for p in folder.glob("step-*.pt"):
        if checkpoint._step(p) > 20:
            p.unlink()
    (tmp_path / "r" / "final_model.pt").unlink()  # as if the driver was lost after step 20
    weight = torch.load(folder / "step-00000020.pt", weights_only=True)["blocks"]["0"]["block"]["1.weight"]
    flip_a_byte_of(folder / "step-00000020.pt", weight)
    capsys.readouterr()
    train(cfg, tmp_path / "r")
    assert "checkpoint step-00000020.pt is damaged" in capsys.readouterr().err
    a = torch.load(tmp_path / "r" / "final_model.pt", weights_only=True)
    b = torch.load(tmp_path / "straight" / "final_model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a) and straight.steps == 32


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
