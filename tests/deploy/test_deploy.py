"""deploy/: every cluster YAML passes Ray's own preparation and schema validation (as `ray up` runs
them), the KubeRay manifest and the Prometheus config parse and agree on the metrics port, and every
metric the Grafana dashboard plots exists in the exporter."""
import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "gcp-gpu.yaml", "local.yaml"])
def test_cluster_yaml_passes_rays_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((DEPLOY / name).read_text())
    validate_config(prepare_config(copy.deepcopy(raw)))
    assert any("dfa_async" in c for c in raw["setup_commands"])
    bad = copy.deepcopy(raw)
    bad["setup_comands"] = bad.pop("setup_commands")  # a misspelt key must fail: the check can fail
    with pytest.raises(Exception):
        validate_config(prepare_config(bad))


def test_gpu_clusters_give_each_stage_actor_a_gpu():
    gcp = yaml.safe_load((DEPLOY / "gcp-gpu.yaml").read_text())
    assert gcp["available_node_types"]["gpu_worker"]["resources"] == {"GPU": 1}
    aws = yaml.safe_load((DEPLOY / "aws-gpu.yaml").read_text())
    assert aws["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"].startswith(("g5.", "g6.", "p"))


def test_kuberay_job_and_prometheus_agree_on_the_metrics_port():
    job = yaml.safe_load((DEPLOY / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert "dfa_async.cli train" in job["spec"]["entrypoint"]
    port = int(re.search(r"metrics\.port=(\d+)", job["spec"]["entrypoint"]).group(1))
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert port in [p["containerPort"] for p in head["ports"]]
    for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = [t for job_ in prom["scrape_configs"] for sc in job_["static_configs"] for t in sc["targets"]]
    assert any(t.endswith(f":{port}") for t in targets)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus) is not installed")
def test_promtool_accepts_the_scrape_config():
    proc = subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus.yml")], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_dashboard_metric_exists_in_the_exporter():
    from dfa_async.metrics import Exporter

    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    used = {re.sub(r"_(total|bucket|count|sum)$", "", m)  # series of counters and histograms: their family
            for p in dash["panels"] for t in p["targets"] for m in re.findall(r"\bdfa_[a-z_]+", t["expr"])}
    exporter = Exporter(0)  # loopback, any free port
    try:
        exported = {m.name for m in exporter.registry.collect()}
    finally:
        exporter.close()
    assert used and used <= exported, used - exported
