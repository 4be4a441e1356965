"""The one Markdown table writer."""
import pytest

from dfa_async import tables


def test_a_table_with_alignment_and_missing_cells():
    out = tables.markdown(["N", "mode", "rate"], [[1, "ddp", "12.5"], [2, "gpipe", None]], "rlr")
    assert out.splitlines() == ["| N | mode | rate |", "|---:|---|---:|", "| 1 | ddp | 12.5 |", "| 2 | gpipe | - |"]
    assert tables.markdown(["a", "b"], []).splitlines()[1] == "|---|---:|"  # default: first column left


def test_rows_that_do_not_fit_the_columns_are_refused():
    with pytest.raises(ValueError, match="2 columns"):
        tables.markdown(["a", "b"], [[1, 2, 3]])
    with pytest.raises(ValueError, match="alignment 'l'"):
        tables.markdown(["a", "b"], [[1, 2]], "l")
