import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DFA_ASYNC_DATA") or ROOT.parent / "shared" / "data")


@pytest.fixture
def shared_data():
    if not (SHARED_DATA / "mnist" / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"MNIST is not under {SHARED_DATA}; set DFA_ASYNC_DATA to the shared data folder")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def small_config(**sections):
    """A fast synthetic setup: 8x8 inputs, MLP 32-32-10, local backend."""
    from dfa_async.config import from_dict

    raw = {"data": {"name": "synthetic", "n_train": 256, "n_test": 128},
           "model": {"widths": [32, 32]},
           "train": {"epochs": 1, "batch_size": 16, "log_every": 1},
           "runtime": {"backend": "local"}}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return from_dict(raw)
