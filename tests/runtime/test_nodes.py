"""Faults at cluster scale, with Ray's multi-node test cluster on this machine (ray.cluster_utils.Cluster:
a head and worker nodes, each its own raylet): a worker node removed mid-run, then gone for good."""
import threading

import pytest
import ray
import torch
from ray.cluster_utils import Cluster

from dfa_async import checkpoint, runlog, train
from dfa_async.run import TrainingStopped

from conftest import small_config

MLP = dict(model={"widths": [24, 24]}, data={"n_train": 9600, "n_test": 64}, checkpoint={"every": 60, "keep": 3},
           train={"batch_size": 16})


def cfg(**runtime):
    return small_config(**MLP, runtime={"backend": "ray", "depth": 2, "placement": "spread", **runtime})


@pytest.fixture
def nodes():
    """A head (1 CPU) and worker nodes added by the test; every process is the cluster's own, ended by
    its shutdown."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def remove_when(cluster, node, run_dir, step, box):
    """Remove `node` once step `step` was logged (a checkpoint lies before it)."""
    path = run_dir / "events.msgpack"
    while not box["stop"].is_set():
        if path.exists():
            recs = runlog.read(path)
            if any(r["kind"] == "train" and r["step"] >= step for r in recs):
                cluster.remove_node(node)
                box["removed"] = True
                return
            if any(r["kind"] == "done" for r in recs):
                return
        box["stop"].wait(0.01)


def run_removing(cluster, node, config, run_dir, step):
    box = {"stop": threading.Event()}
    remover = threading.Thread(target=remove_when, args=(cluster, node, run_dir, step, box), daemon=True)
    remover.start()
    try:
        return train(config, run_dir), box
    finally:
        box["stop"].set()
        remover.join()


def test_a_worker_node_removed_mid_run_is_survived_with_the_same_weights(nodes, tmp_path):
    doomed = nodes.add_node(num_cpus=1)
    nodes.add_node(num_cpus=2)
    nodes.wait_for_nodes()
    result, box = run_removing(nodes, doomed, cfg(), tmp_path / "r", step=150)
    assert box.get("removed"), "the run ended before the node could be removed"
    assert result.restarts == 1  # spread placement put a stage on the removed node
    (restart,) = runlog.read(tmp_path / "r" / "events.msgpack", "restart")
    assert restart["checkpoint"].startswith("step-")
    ref = train(small_config(**MLP, runtime={"backend": "local", "depth": 2}), tmp_path / "ref")
    a = checkpoint.load(tmp_path / "r" / "final_model.pt")
    b = checkpoint.load(tmp_path / "ref" / "final_model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert result.test_accuracy == ref.test_accuracy


def test_a_node_that_never_comes_back_stops_the_run_with_its_last_checkpoint(nodes, tmp_path):
    doomed = nodes.add_node(num_cpus=2)
    nodes.wait_for_nodes()
    with pytest.raises(TrainingStopped, match=r"cannot be placed again: .*; last good checkpoint: step-\d+\.pt"):
        run_removing(nodes, doomed, cfg(placement_timeout_s=5), tmp_path / "r", step=150)
    path, state = checkpoint.latest(tmp_path / "r")
    assert state["step"] >= 59 and set(state["blocks"]) == {"0", "1", "2"}
    assert runlog.read(tmp_path / "r" / "events.msgpack", "stopped")
