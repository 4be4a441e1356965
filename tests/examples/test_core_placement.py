"""examples/core_placement.py: the summary of sampled cores worked out by hand, and a real run of the data
plane's stages sampled through /proc."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
import core_placement  # noqa: E402


def test_summary_of_a_hand_table():
    rows = [[0, 0, 1], [0, 1, 1], [1, 1, 1]]
    out = core_placement.summarize(rows, seconds=2.0)
    assert [out["same_core"][i][i] for i in range(3)] == [1.0, 1.0, 1.0]
    assert all(out["same_core"][i][j] == out["same_core"][j][i] for i in range(3) for j in range(3))
    assert out["same_core"][0][1] == pytest.approx(2 / 3) and out["same_core"][0][2] == pytest.approx(1 / 3)
    assert out["neighbours"] == pytest.approx(2 / 3) and out["others"] == pytest.approx(1 / 3)
    assert out["moves_per_s"] == [0.5, 0.5, 0.0] and out["samples"] == 3


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_a_real_run_is_sampled(ray_instance, capsys):
    out = core_placement.main(["--stages", "3", "--depth", "2", "--width", "16", "--batch", "8", "--blocks", "3",
                               "--steps", "300", "--every", "0.0005"])
    # (the summary's own properties, a diagonal of ones and symmetry, are checked on the hand table)
    assert out["samples"] > 0 and len(out["same_core"]) == 3 and len(out["moves_per_s"]) == 3
    # each stage ran on a CPU for part of every step, in the pipeline and in the ceiling's loops
    ceiling = out["ceiling"]
    assert len(out["cpu_ms_per_step"]) == 3 and all(x > 0 for x in out["cpu_ms_per_step"])
    assert len(ceiling["cpu_ms_per_step"]) == 3 and all(x > 0 for x in ceiling["cpu_ms_per_step"])
    # the stages' CPU time cannot exceed the wall time of the steps on this machine's cores
    assert sum(out["cpu_ms_per_step"]) <= os.cpu_count() * 1e3 / out["steps_per_s"] * 1.05
    assert sum(ceiling["cpu_ms_per_step"]) <= os.cpu_count() * 1e3 / ceiling["steps_per_s"] * 1.05
    text = capsys.readouterr().out
    assert f"neighbours (s, s + 1): {out['neighbours']:.2f}" in text and "ceiling:" in text
