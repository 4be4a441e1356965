"""Partitions: stage ranges, the bench's even split, and the balanced split (checked against brute
force)."""
import itertools

import pytest
from hypothesis import given, settings, strategies as st

from dfa_async import partition


def test_ranges_number_the_blocks_of_each_stage_in_order():
    assert partition.ranges([2, 1, 3]) == [[0, 1], [2], [3, 4, 5]]
    assert partition.ranges([1]) == [[0]]


def test_even_is_balanced_and_keeps_the_head_last():
    assert partition.even(8, 3) == [2, 3, 4] and partition.even(4, 4) == [1, 1, 1, 2]
    assert partition.even(2, 1) == [3]
    with pytest.raises(ValueError, match="--stages: 5 stages for a model of 4 blocks"):
        partition.even(4, 5)


def brute_force(costs, n):
    best = None
    for cuts in itertools.combinations(range(1, len(costs)), n - 1):
        bounds = (0, *cuts, len(costs))
        worst = max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:]))
        if best is None or worst < best:
            best = worst
    return best


@pytest.mark.parametrize("costs,n,want", [
    ([1, 1, 1, 1], 2, [2, 2]),
    ([9, 1, 1, 1], 2, [1, 3]),
    ([1, 1, 1, 9], 2, [3, 1]),
    ([5, 1, 1, 1, 1, 1], 2, [1, 5]),
    ([4, 1, 1, 1, 1, 4], 3, [1, 4, 1]),
    ([3, 3, 3], 3, [1, 1, 1]),
    ([2, 7, 1], 1, [3]),
])
def test_balanced_table(costs, n, want):
    assert partition.balanced(costs, n) == want


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.01, 100), min_size=1, max_size=8), st.integers(1, 8))
def test_balanced_is_as_good_as_brute_force(costs, n):
    n = min(n, len(costs))
    sizes = partition.balanced(costs, n)
    assert len(sizes) == n and all(s >= 1 for s in sizes) and sum(sizes) == len(costs)
    bounds = [0]
    for s in sizes:
        bounds.append(bounds[-1] + s)
    worst = max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:]))
    assert worst == pytest.approx(brute_force(costs, n))
