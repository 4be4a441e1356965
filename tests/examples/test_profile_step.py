"""examples/profile_step.py: both rules profiled on the same steps; DFA runs no input-gradient product of
a hidden block, backprop does, and the tiny model's table reads back what it printed."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
import profile_step  # noqa: E402


def test_dfa_skips_the_input_gradient_product_backprop_runs(capsys):
    table = profile_step.main(["--width", "16", "--batch", "8", "--stages", "2", "--steps", "5", "--rows", "50"])
    out = capsys.readouterr().out
    mm = {shapes: (d, b) for op, shapes, d, b in table if op == "aten::mm"}
    # backprop's input gradient of the second hidden block: [8, 16] x [16, 16]; DFA never computes it
    dfa_time, bp_time = mm["[[8, 16], [16, 16]]"]
    assert bp_time > 0 and dfa_time == 0
    # both compute the weight gradients of the hidden blocks: [16, 8] x [8, 16]
    assert all(t > 0 for t in mm["[[16, 8], [8, 16]]"])
    assert "total per step: dfa" in out and "aten::mm" in out
    # the split: every op is either run by one rule only or by both, and the bound follows from the parts
    s = profile_step.split(table)
    assert s["bp_only"] >= bp_time > 0 and s["shared_dfa"] > 0 and s["shared_bp"] > 0
    assert s["shared_dfa"] + s["dfa_only"] == pytest.approx(sum(d for _, _, d, _ in table))
    assert s["shared_bp"] + s["bp_only"] == pytest.approx(sum(b for _, _, _, b in table))
    assert s["bound"] == pytest.approx((s["shared_bp"] + s["dfa_only"]) / (s["shared_bp"] + s["bp_only"]))
    assert f"{s['bound']:.3f}" in out.split("what skipping its input-gradient products can buy")[1]
