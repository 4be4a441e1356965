"""The control plane: a placement the cluster can never satisfy is a clear error, and leaves the
instance usable."""
import pytest

from dfa_async import train
from dfa_async.config import ConfigError
from dfa_async.runtime import cluster

from conftest import small_config

pytestmark = pytest.mark.usefixtures("ray_instance")


def test_stages_the_cluster_cannot_place_give_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "PLACEMENT_TIMEOUT_S", 3)
    cfg = small_config(model={"widths": [8, 8, 8, 8]}, runtime={"backend": "ray"})  # 5 stages on 4 CPUs
    with pytest.raises(ConfigError, match="could not place 5 stages"):
        train(cfg, tmp_path / "r")
    assert not (tmp_path / "r" / "final_model.pt").exists()
    # The instance is usable afterwards (the placement group was removed).
    assert train(small_config(runtime={"backend": "ray"}), tmp_path / "ok").steps == 16
