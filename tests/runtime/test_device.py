"""The Ray trainer on the device named by $DFA_ASYNC_TEST_DEVICE (cpu here; cuda in
examples/device_check.sh, with $DFA_ASYNC_TEST_GPUS_PER_STAGE when stages share a GPU) ends with the
single-process reference's weights, at D = 1 and 3. On the CPU they are equal bit for bit; on a GPU, up to
the order of floating-point sums in its kernels."""
import os

import pytest

from dfa_async import runlog, train

from conftest import small_config
from test_pipeline import max_diff, weights

pytestmark = pytest.mark.usefixtures("ray_instance")

DEVICE = os.environ.get("DFA_ASYNC_TEST_DEVICE", "cpu")
SHARE = float(os.environ.get("DFA_ASYNC_TEST_GPUS_PER_STAGE", "1"))


@pytest.mark.parametrize("depth", [1, 3])
def test_trainer_on_the_device_ends_with_the_reference_weights(tmp_path, depth):
    sections = dict(model={"widths": [24, 24], "dropout_hidden": 0.1}, data={"n_train": 352, "n_test": 64},
                    train={"epochs": 2})
    runtime = {"depth": depth, "blocks_per_stage": [1, 2], "device": DEVICE}
    # The reference on the same device: dropout masks come from that device's generator (CPU and CUDA
    # draw different masks from one seed), so a CPU reference differs from a GPU run by design.
    train(small_config(**sections, runtime={**runtime, "backend": "local"}), tmp_path / "ref")
    on = {"gpus_per_stage": SHARE} if DEVICE == "cuda" else {}
    train(small_config(**sections, runtime={**runtime, "backend": "ray", **on}), tmp_path / "ray")
    stages = runlog.read(tmp_path / "ray" / "events.msgpack", "stages")[0]
    assert stages["device"] == DEVICE
    diff = max_diff(weights(tmp_path / "ref"), weights(tmp_path / "ray"))
    assert diff == 0.0 if DEVICE == "cpu" else diff < 1e-4, diff
