"""Named random streams. Every random draw (initialization, feedback matrices, shuffling, dropout) comes
from a seed derived from the run's seed and a path such as ("dropout", block, step), so it does not
depend on which process draws it: the placement of blocks on actors never changes what is learned."""
import zlib

import numpy as np


def derive(seed: int, *path) -> int:
    """A 63-bit seed for the stream named by `path` (ints and strings)."""
    words = [int(seed)] + [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in path]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def generator(seed: int, *path):
    import torch

    return torch.Generator().manual_seed(derive(seed, *path))
