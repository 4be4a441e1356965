"""The pipeline schedule as a table, and its invariants as properties."""
from hypothesis import given, strategies as st

from dfa_async.schedule import Op, boundaries, ops, staleness, window_end


def table(*pairs):
    return [Op({"F": "forward", "U": "update", "B": "boundary"}[k], t) for k, t in pairs]


def test_depth_one_is_synchronous():
    assert list(ops(0, 3, 1, [2])) == table(("F", 0), ("U", 0), ("F", 1), ("U", 1), ("F", 2), ("U", 2), ("B", 2))


def test_depth_two_updates_step_t_minus_one_after_forward_t():
    assert list(ops(0, 4, 2, [3])) == table(("F", 0), ("F", 1), ("U", 0), ("F", 2), ("U", 1), ("F", 3),
                                            ("U", 2), ("U", 3), ("B", 3))


def test_boundary_drains_then_refills():
    assert list(ops(0, 5, 3, boundaries=[1, 4])) == table(
        ("F", 0), ("F", 1), ("U", 0), ("U", 1), ("B", 1),
        ("F", 2), ("F", 3), ("F", 4), ("U", 2), ("U", 3), ("U", 4), ("B", 4))


def test_resume_after_a_boundary_starts_with_an_empty_pipeline():
    assert list(ops(2, 4, 2, [1, 3])) == table(("F", 2), ("F", 3), ("U", 2), ("U", 3), ("B", 3))


def test_a_window_cut_mid_pipeline_adds_no_drain():
    # D = 3, boundary only at 7: the window [3, 5) starts with steps 1 and 2 in flight.
    assert list(ops(3, 5, 3, [7])) == table(("F", 3), ("U", 1), ("F", 4), ("U", 2))
    # Right after a boundary nothing is in flight, however deep the pipeline.
    assert list(ops(3, 4, 3, [2, 7])) == table(("F", 3))


def windows(start, stop, cuts, longest=0):
    out = []
    while start < stop:
        out.append((start, window_end(start, stop, sorted(set(cuts)), longest)))
        start = out[-1][1]
    return out


def test_windows_end_at_cuts_and_are_bounded():
    assert window_end(0, 10, [3, 9]) == 4 and window_end(4, 10, [3, 9]) == 10
    assert windows(0, 10, cuts=[3], longest=4) == [(0, 4), (4, 8), (8, 10)]
    assert windows(5, 12, cuts=[2, 7, 30], longest=0) == [(5, 8), (8, 12)]
    assert windows(4, 4, cuts=[]) == []


def test_boundaries_are_epoch_ends_checkpoints_and_the_last_step():
    assert boundaries(10, 4, 3) == [2, 3, 5, 7, 8, 9]
    assert boundaries(5, 10, 0) == [4]


def test_staleness_is_depth_minus_one_in_steady_state():
    s = staleness(ops(0, 10, 3, [9]))
    assert [s[t] for t in range(10)] == [0, 1, 2, 2, 2, 2, 2, 2, 2, 2]


@given(st.integers(1, 40), st.integers(1, 6), st.sets(st.integers(0, 39), max_size=6))
def test_every_step_is_forwarded_then_updated_once_with_bounded_stash(n, depth, marks):
    seq = list(ops(0, n, depth, sorted(marks | {n - 1})))
    fwd = [o.step for o in seq if o.kind == "forward"]
    upd = [o.step for o in seq if o.kind == "update"]
    assert fwd == list(range(n)) and upd == list(range(n))  # updates in step order
    pending = 0
    for o in seq:
        pending += {"forward": 1, "update": -1, "boundary": 0}[o.kind]
        assert 0 <= pending <= depth
        if o.kind == "boundary":
            assert pending == 0
    assert max(staleness(seq).values()) <= depth - 1


@given(st.integers(1, 40), st.integers(1, 6), st.sets(st.integers(0, 39), max_size=6),
       st.sets(st.integers(0, 39), max_size=8), st.integers(0, 7))
def test_any_split_into_windows_is_the_whole_run(n, depth, marks, cuts, longest):
    marks = sorted(marks | {n - 1})
    whole = list(ops(0, n, depth, marks))
    parts = windows(0, n, cuts, longest)
    assert parts[0][0] == 0 and parts[-1][1] == n and all(b > a for a, b in parts)
    assert [op for a, b in parts for op in ops(a, b, depth, marks)] == whole
    # A resumed run (from just after any boundary) continues the same sequence.
    for m in marks:
        if m < n - 1:
            tail = [op for a, b in windows(m + 1, n, cuts, longest) for op in ops(a, b, depth, marks)]
            assert tail == whole[whole.index(Op("boundary", m)) + 1:]


def test_evaluations_drain_the_pipeline_as_epoch_ends_and_checkpoints_do():
    assert boundaries(20, 8, 0) == [7, 15, 19]
    assert boundaries(20, 8, 0, eval_every=5) == [4, 7, 9, 14, 15, 19]
    assert boundaries(20, 8, 6, eval_every=5) == [4, 5, 7, 9, 11, 14, 15, 17, 19]
