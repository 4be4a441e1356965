"""The control plane: a placement the cluster can never satisfy is a clear error, and leaves the
instance usable."""
import os

import pytest

from dfa_async import train
from dfa_async.config import ConfigError
from dfa_async.runtime.cluster import time_shared

from conftest import small_config

pytestmark = pytest.mark.usefixtures("ray_instance")


def test_stages_beyond_the_clusters_total_fail_at_once_unless_it_autoscales(tmp_path):
    cfg = small_config(model={"widths": [8, 8, 8, 8]}, runtime={"backend": "ray"})  # 5 stages on 4 CPUs
    with pytest.raises(ConfigError, match=r"5 stages need \{'CPU': 5\}, but the cluster has \{'CPU': 4.0\} in all; "
                                          "use fewer stages, a larger cluster, or runtime.autoscale = true"):
        train(cfg, tmp_path / "r")
    grow = small_config(model={"widths": [8, 8, 8, 8]},
                        runtime={"backend": "ray", "autoscale": True, "placement_timeout_s": 2})
    with pytest.raises(ConfigError, match="runtime.placement_timeout_s: the cluster could not place 5 stages"):
        train(grow, tmp_path / "r2")
    assert not (tmp_path / "r" / "final_model.pt").exists()
    # The instance is usable afterwards (the placement group was removed).
    assert train(small_config(runtime={"backend": "ray"}), tmp_path / "ok").steps == 16


def test_stages_that_fit_but_find_the_cluster_busy_wait_then_say_so(tmp_path, capsys):
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    busy = placement_group([{"CPU": 1}] * 3)  # another job holds 3 of the 4 CPUs
    ray.get(busy.ready())
    try:
        cfg = small_config(runtime={"backend": "ray", "placement_timeout_s": 2})  # 3 stages
        with pytest.raises(ConfigError, match="could not place 3 stages .* within 2 s"):
            train(cfg, tmp_path / "r")
        assert "waiting up to 2 s for the cluster to place 3 stages" in capsys.readouterr().out
    finally:
        remove_placement_group(busy)
    assert train(small_config(runtime={"backend": "ray"}), tmp_path / "ok").steps == 16


def test_stages_that_outnumber_this_machines_cores_are_warned_with_what_fits():
    assert time_shared(2, 1, 2) is None and time_shared(4, 2, 8) is None
    note = time_shared(4, 1, 2)
    assert note.startswith("runtime.blocks_per_stage: 4 stages x 1 thread(s) on this machine's 2 cores")
    assert "into at most 2 stage(s) with runtime.blocks_per_stage" in note and "runtime.num_stages = 2" in note
    assert "at most 1 stage(s)" in time_shared(2, 2, 3)  # two-thread stages on 3 cores: one fits


@pytest.mark.slow  # a Ray instance of its own in a subprocess: 10-15 s
def test_a_private_instance_started_from_python_says_nothing_about_its_token(tmp_path):
    """Ray announces the token mode it picks for a new local instance; for the run's own private instance
    (the Python API, where nothing chose RAY_AUTH_MODE first) that line is noise, and nothing else is lost."""
    import subprocess
    import sys

    code = ("import ray\nfrom dfa_async.runtime import cluster\ncluster.start_local(1)\n"
            "print('answer', ray.get(ray.remote(lambda: 41 + 1).remote()))\ncluster.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "answer 42" in done.stdout
    assert "Token authentication" not in done.stderr, done.stderr
