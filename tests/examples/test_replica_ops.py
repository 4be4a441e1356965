"""examples/replica_ops.py: a replica's op times beside the single process's, on a real Ray instance of its
own (the script starts one: this module uses no shared instance)."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
import replica_ops  # noqa: E402


@pytest.mark.slow  # 15 s: a Ray instance of its own
def test_the_replicas_ops_are_timed_beside_the_single_process(capsys):
    rows = replica_ops.main(["--width", "64", "--batch", "16", "--steps", "10"])
    assert [name for name, _, _ in rows] == ["one process, 16 rows", "one process, 8 rows", "replica 0 of 2, 8 rows",
                                             "replica 1 of 2, 8 rows"]
    assert all(f > 0 and u > 0 for _, f, u in rows)
    out = capsys.readouterr().out
    assert out.startswith("64-wide model, one stage; median ms over 10 steps") and "replica 1 of 2, 8 rows" in out
