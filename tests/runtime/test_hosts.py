"""Stages on separate hosts (tests/runtime/hosts.py): one stage per node over gloo, each rank listening on
its own node's address, the same weights as the single-process reference bit for bit (D = 1 and 3); a
host removed mid-run (every process of its namespace killed) survived with those weights; the doctor's
plan and pings; and a stage pair that cannot talk, named in one line by the doctor and, when it persists,
by the trainer. The network-namespace variant needs root and `ip netns` (skipped with the reason
elsewhere); the loopback variant always runs."""
import contextlib
import io
import threading
import time

import pytest
import ray
import torch

from dfa_async import cli, runlog, train
from dfa_async.run import TrainingStopped

from conftest import small_config
from hosts import LoopbackHosts, NetnsHosts, netns_available

MLP = dict(model={"widths": [24, 24], "dropout_hidden": 0.1}, data={"n_train": 4800, "n_test": 64},
           checkpoint={"every": 50, "keep": 3}, train={"batch_size": 16})
WHY_NOT = netns_available()


@pytest.fixture(scope="module", params=["loopback", "netns"])
def hosts(request):
    """A head with 2 CPUs and two worker hosts with 1 each: three stages spread one per host, and room
    for them on the two hosts left when one is removed. Separate network stacks where this machine can
    make them; else hosts on loopback addresses (which test everything but the network between hosts)."""
    if request.param == "netns" and WHY_NOT:
        pytest.skip(f"separate network stacks: {WHY_NOT}")
    if request.param == "loopback" and not WHY_NOT:
        pytest.skip("separate network stacks are available here: the netns hosts cover what loopback would")
    made = (NetnsHosts if request.param == "netns" else LoopbackHosts)([1, 1])
    ray.init(address=made.address, log_to_driver=False, configure_logging=False)
    made.kind = request.param
    try:
        yield made
    finally:
        ray.shutdown()
        made.close()


def spread(depth: int, placement: str = "strict_spread", **runtime):
    """Three stages, one per host (strict_spread); `spread` lets them double up once a host is gone."""
    return small_config(**MLP, runtime={"backend": "ray", "depth": depth, "placement": placement,
                                        "blocks_per_stage": [1, 1, 1], **runtime})


def weights(run_dir):
    return torch.load(run_dir / "final_model.pt", weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = {}
    for depth in (1, 3):
        path = tmp_path_factory.mktemp(f"ref{depth}")
        train(small_config(**MLP, runtime={"backend": "local", "depth": depth}), path)
        out[depth] = weights(path)
    return out


@pytest.mark.parametrize("depth", [1, 3])
def test_one_stage_per_host_over_gloo_equals_the_reference_bit_for_bit(hosts, reference, tmp_path, depth):
    train(spread(depth), tmp_path)
    (stages,) = runlog.read(tmp_path / "events.msgpack", "stages")
    assert stages["transport"] == "gloo"
    nodes = [row["node"] for row in stages["stages"]]
    assert sorted(nodes) == sorted(hosts.nodes)  # one stage per host
    assert [row["host"] for row in stages["stages"]] == nodes  # each listened on its own node's address
    got = weights(tmp_path)
    assert got.keys() == reference[depth].keys()
    assert all(torch.equal(got[k], reference[depth][k]) for k in got)


def doctor(*sets: str) -> tuple[int, str, str, float]:
    out, err = io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["doctor", "--set", "data.name=synthetic", "--set", "runtime.placement=strict_spread",
                         "--set", "runtime.blocks_per_stage=[1,1,1]", *[a for s in sets for a in ("--set", s)]])
    return code, out.getvalue(), err.getvalue(), time.monotonic() - t0


def test_the_doctor_prints_the_plan_and_a_ping_through_every_channel(hosts):
    code, out, err, _ = doctor()
    assert code == 0, err
    assert "transport gloo" in out
    for src, dst in [(0, 1), (1, 2), (2, 0), (2, 1)]:
        line = next(ln for ln in out.splitlines() if ln.startswith(f"stage {src} -> stage {dst} "))
        assert "gloo" in line and float(line.split("ms")[0].split()[-1]) > 0
    assert "all 4 channels answered" in out
    for ip in hosts.nodes:
        assert ip in out


def placed(out: str) -> dict[str, int]:
    """node -> stage, from the doctor's plan table."""
    rows = [ln.split() for ln in out.splitlines() if ln[:5].strip().isdigit()]
    return {r[3]: int(r[0]) for r in rows}  # stage, replica, blocks, node


@pytest.mark.skipif(WHY_NOT is not None, reason=f"separate network stacks: {WHY_NOT}")
def test_a_pair_that_cannot_talk_is_named_in_one_line_by_the_doctor_and_the_trainer(hosts, tmp_path):
    if hosts.kind != "netns":
        pytest.skip("only separate network stacks can cut one pair of hosts")
    a, b = hosts.nodes[1], hosts.nodes[2]
    hosts.isolate(a, b)
    try:
        code, out, err, took = doctor("runtime.peer_timeout_s=4")  # each channel's connect waits 4 s at most
        assert code == 1 and took < 20, (out, err)
        where = placed(out)
        pair = sorted((where[a], where[b]))
        (line,) = err.strip().splitlines()
        assert f"stage {pair[0]}" in line and f"stage {pair[1]}" in line and "cannot connect" in line
        with pytest.raises(TrainingStopped) as stopped:  # the restart loop tries again, then one line
            train(spread(1, max_failures=1, peer_timeout_s=4), tmp_path)
        assert "stopped after 2 failures" in str(stopped.value) and "cannot connect" in str(stopped.value)
        assert len(str(stopped.value).splitlines()) == 1
        assert len(runlog.read(tmp_path / "events.msgpack", "restart")) == 2
    finally:
        hosts.isolate(a, b, on=False)


def test_a_host_removed_mid_run_is_survived_with_the_reference_weights(hosts, reference, tmp_path):
    """Last in the module: the host stays removed."""
    log = tmp_path / "events.msgpack"
    box = {"stop": threading.Event()}

    def remove_when_running():
        """Once step 120 is logged (a checkpoint lies before it), remove a worker host holding a stage."""
        while not box["stop"].is_set():
            if log.exists():
                recs = runlog.read(log)
                if any(r["kind"] == "train" and r["step"] >= 120 for r in recs):
                    stages = next(r for r in recs if r["kind"] == "stages")
                    box["gone"] = next(row["node"] for row in stages["stages"] if row["node"] != hosts.head_ip)
                    hosts.remove(box["gone"])
                    return
                if any(r["kind"] == "done" for r in recs):
                    return
            box["stop"].wait(0.01)

    remover = threading.Thread(target=remove_when_running, daemon=True)
    remover.start()
    try:
        result = train(spread(3, "spread"), tmp_path)
    finally:
        box["stop"].set()
        remover.join()
    assert box.get("gone"), "the run ended before a host could be removed"
    assert result.restarts >= 1
    got = weights(tmp_path)
    assert all(torch.equal(got[k], reference[3][k]) for k in got)
