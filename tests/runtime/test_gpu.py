"""On GPUs (marker `gpu`; skipped with the reason where this machine has none, as on the project's CI):
the Ray trainer equals the single-process reference on the same device through every transport the
machine supports — stages sharing one GPU (pinned host buffers over shm), and with two GPUs or more one GPU
per stage (nccl, device to device) — and op times come from CUDA events. examples/device_check.sh runs
these first on a lent GPU machine."""
import pytest
import torch

from dfa_async import runlog, train
from dfa_async.stage import Clock

from conftest import small_config
from test_pipeline import max_diff, weights

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(GPUS == 0, reason="no CUDA device on this machine"),
              pytest.mark.usefixtures("ray_instance")]

NET = dict(model={"widths": [24, 24], "dropout_hidden": 0.1}, data={"n_train": 352, "n_test": 64},
           train={"epochs": 2})


def run_both(tmp_path, depth: int, share: float, replicas: int = 1, **extra) -> dict:
    runtime = {"depth": depth, "blocks_per_stage": [1, 2], "device": "cuda", **extra}
    # The reference on the same device: CUDA draws other dropout masks than the CPU from one seed.
    train(small_config(**NET, runtime={**runtime, "backend": "local"}), tmp_path / "ref")
    train(small_config(**NET, runtime={**runtime, "backend": "ray", "gpus_per_stage": share, "replicas": replicas}),
          tmp_path / "ray")
    (stages,) = runlog.read(tmp_path / "ray" / "events.msgpack", "stages")
    # Up to the order of floating-point sums in the device's kernels (the same kernels run in both, but
    # cuBLAS may pick others for another stream or process).
    assert max_diff(weights(tmp_path / "ref"), weights(tmp_path / "ray")) < 1e-4
    return stages


@pytest.mark.parametrize("depth", [1, 3])
def test_stages_sharing_one_gpu_use_pinned_buffers_and_equal_the_reference(tmp_path, depth):
    stages = run_both(tmp_path, depth, 0.5)
    assert stages["transport"] == "shm" and stages["device"] == "cuda"
    assert {row["buffers"] for row in stages["stages"]} == {"pinned"}


@pytest.mark.skipif(GPUS < 2, reason=f"nccl needs a GPU per stage; this machine has {GPUS}")
@pytest.mark.parametrize("depth", [1, 3])
def test_one_gpu_per_stage_over_nccl_equals_the_reference(tmp_path, depth):
    stages = run_both(tmp_path, depth, 1.0)
    assert stages["transport"] == "nccl"
    assert {row["buffers"] for row in stages["stages"]} == {"device"}
    assert all(row["device"] == "cuda:0" for row in stages["stages"])  # each actor's own GPU is its device 0


def test_replicas_sharing_one_gpu_sum_through_pinned_memory_and_equal_the_reference(tmp_path):
    # 2 stages x 2 replicas on one GPU; with weight prediction (fused Adam keeps its step count on the device)
    stages = run_both(tmp_path, 3, 0.25, replicas=2, weight_prediction=True)
    assert stages["replicas"] == 2 and {row["replicas"] for row in stages["stages"]} == {"shm"}


@pytest.mark.skipif(GPUS < 4, reason=f"2 stages x 2 replicas with a GPU each need 4 GPUs; this machine has {GPUS}")
def test_replicas_with_a_gpu_each_sum_over_nccl_and_equal_the_reference(tmp_path):
    stages = run_both(tmp_path, 3, 1.0, replicas=2)
    assert {row["replicas"] for row in stages["stages"]} == {"nccl"}


def test_op_times_on_a_gpu_come_from_cuda_events():
    clock, x = Clock(torch.device("cuda")), torch.randn(2048, 2048, device="cuda")
    a = clock.now()
    for _ in range(20):
        x = torch.tanh(x @ x) / 2048
    b = clock.now()
    c = clock.now()
    ((_, _, start, end, _), (_, _, s2, e2, _)) = clock.resolve([("forward", 0, a, b, 0), ("update", 0, b, c, 0)])
    assert end - start > 1e-4  # the kernels' run, not their launch (20 matmuls of 2048^2)
    assert start <= end <= s2 <= e2
