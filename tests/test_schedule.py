"""The pipeline schedule as a table, and its invariants as properties."""
from hypothesis import given, strategies as st

from dfa_async.schedule import Op, boundaries, ops, staleness


def table(*pairs):
    return [Op({"F": "forward", "U": "update", "B": "boundary"}[k], t) for k, t in pairs]


def test_depth_one_is_synchronous():
    assert list(ops(0, 3, 1)) == table(("F", 0), ("U", 0), ("F", 1), ("U", 1), ("F", 2), ("U", 2), ("B", 2))


def test_depth_two_updates_step_t_minus_one_after_forward_t():
    assert list(ops(0, 4, 2)) == table(("F", 0), ("F", 1), ("U", 0), ("F", 2), ("U", 1), ("F", 3),
                                       ("U", 2), ("U", 3), ("B", 3))


def test_boundary_drains_then_refills():
    assert list(ops(0, 5, 3, boundaries=[1])) == table(
        ("F", 0), ("F", 1), ("U", 0), ("U", 1), ("B", 1),
        ("F", 2), ("F", 3), ("F", 4), ("U", 2), ("U", 3), ("U", 4), ("B", 4))


def test_resume_starts_with_an_empty_pipeline():
    assert list(ops(2, 4, 2)) == table(("F", 2), ("F", 3), ("U", 2), ("U", 3), ("B", 3))


def test_boundaries_are_epoch_ends_checkpoints_and_the_last_step():
    assert boundaries(10, 4, 3) == [2, 3, 5, 7, 8, 9]
    assert boundaries(5, 10, 0) == [4]


def test_staleness_is_depth_minus_one_in_steady_state():
    s = staleness(ops(0, 10, 3))
    assert [s[t] for t in range(10)] == [0, 1, 2, 2, 2, 2, 2, 2, 2, 2]


@given(st.integers(1, 40), st.integers(1, 6), st.sets(st.integers(0, 39), max_size=6))
def test_every_step_is_forwarded_then_updated_once_with_bounded_stash(n, depth, marks):
    seq = list(ops(0, n, depth, marks))
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
