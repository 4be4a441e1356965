"""Which blocks each stage holds, as pure functions of block counts and costs (no torch): the stages of a
plan, an even split for the bench's equal blocks, and the balanced split of measured costs."""
from __future__ import annotations


def ranges(sizes: list[int]) -> list[list[int]]:
    """Block indices of each stage, from the blocks per stage: [2, 1] -> [[0, 1], [2]]."""
    out, k = [], 0
    for n in sizes:
        out.append(list(range(k, k + n)))
        k += n
    return out


def even(blocks: int, stages: int) -> list[int]:
    """Blocks per stage for `blocks` equal hidden blocks and the (small) head on `stages` stages: as even
    as it goes, the head with the last stage."""
    if not 1 <= stages <= blocks:
        raise ValueError(f"--stages: {stages} stages for a model of {blocks} blocks; use 1 to {blocks}")
    sizes = [blocks // stages + (i < blocks % stages) for i in range(stages)][::-1]
    sizes[-1] += 1
    return sizes


def balanced(costs: list[float], n: int) -> list[int]:
    """Blocks per stage: `costs` cut into `n` contiguous, non-empty parts whose largest sum is smallest
    (ties: the earliest such cut). Dynamic programming over prefix sums, O(n * blocks^2)."""
    k = len(costs)
    if not 1 <= n <= k:
        raise ValueError(f"runtime.num_stages: {n} stages for {k} blocks; use 1 to {k}")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[j][i]: smallest max stage cost putting the first i blocks on j stages; cut[j][i]: its last cut.
    best = [[inf] * (k + 1) for _ in range(n + 1)]
    cut = [[0] * (k + 1) for _ in range(n + 1)]
    best[0][0] = 0.0
    for j in range(1, n + 1):
        for i in range(j, k + 1):
            for m in range(j - 1, i):
                v = max(best[j - 1][m], prefix[i] - prefix[m])
                if v < best[j][i]:
                    best[j][i], cut[j][i] = v, m
    sizes, i = [], k
    for j in range(n, 0, -1):
        sizes.append(i - cut[j][i])
        i = cut[j][i]
    return sizes[::-1]
