"""examples/grid.py: settings for every cell, and finished cells recognised at an fsspec URI. Cells as
local processes: test_best_practices.py; as Ray jobs: test_bottleneck.py."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
import grid  # noqa: E402


def test_settings_for_every_cell_are_checked(capsys):
    with pytest.raises(SystemExit):
        grid.arguments("doc", {"smoke": None}, "out", ["--set", "lr=1"])
    assert "--set: 'lr=1'; use SECTION.KEY=VALUE" in capsys.readouterr().err
    args = grid.arguments("doc", {"smoke": None}, "out", ["--set", "runtime.device=cuda", "--runs", "memory://g"])
    assert args.runs == "memory://g"
    assert grid.command("x.py", args) == "python examples/x.py --budget smoke --set runtime.device=cuda --out out"


def test_a_finished_cell_is_recognised_at_a_uri(tmp_path):
    from dfa_async import train
    from conftest import small_config

    assert not grid.finished("memory://grid-test/r") and grid.outcome("memory://grid-test/r") is None
    train(small_config(), "memory://grid-test/r")
    assert grid.finished("memory://grid-test/r")
    got = grid.outcome("memory://grid-test/r")
    assert 0 <= got["test_error"] <= 100
