"""examples/prediction_cost.py: a run with weight prediction off and on, timed side by side on a real Ray
instance of its own (the script starts one: this module uses no shared instance)."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
import prediction_cost  # noqa: E402


@pytest.mark.slow  # 20 s: a Ray instance of its own, two pipelines
def test_prediction_on_and_off_are_timed_side_by_side(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question. " * 40)
    sets = ["model.kind=gpt", "data.name=text", f"data.path={text}", "model.n_layer=2", "model.n_head=2",
            "model.n_embd=16", "model.block_size=8", "train.batch_size=4", "train.epochs=0", "train.max_steps=100",
            "optim.name=adamw", "runtime.depth=2", "runtime.blocks_per_stage=[2, 1]"]
    best = prediction_cost.main(["--steps", "10", "--rounds", "1", *[a for s in sets for a in ("--set", s)],
                                 "--config", str(ROOT / "examples/configs/shakespeare_char.toml")])
    assert set(best) == {False, True} and all(v > 0 for v in best.values())
    out = capsys.readouterr().out
    assert "round 1  prediction off" in out and "round 1  prediction on" in out
    assert "D = 2, 2 stages, best of 1 rounds of 10 steps: prediction on runs" in out


def test_a_config_without_updates_in_flight_is_refused(capsys):
    with pytest.raises(SystemExit):
        prediction_cost.main(["--config", str(ROOT / "examples/configs/shakespeare_char.toml"),
                              "--set", "runtime.depth=1"])
    assert "prediction changes nothing without updates in flight" in capsys.readouterr().err
