"""The Prometheus exporter over real HTTP on 127.0.0.1."""
import shutil
import urllib.request

import pytest

from dfa_async.metrics import Exporter

from conftest import free_port


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def test_exporter_serves_dfa_metrics():
    ex = Exporter(0, "127.0.0.1")
    try:
        ex.train(7, 0.25, 1234.0)
        ex.eval(7, 0.875, 0.5)
        ex.alignment(7, [{"block": 0, "cos_mean": 0.6, "update_angle": 40.0}])
        text = scrape(ex.port)
        assert "dfa_step 7.0" in text
        assert "dfa_train_loss 0.25" in text
        assert "dfa_test_accuracy 0.875" in text
        assert 'dfa_alignment_cosine{block="0"} 0.6' in text
    finally:
        ex.close()


def test_two_exporters_do_not_collide():
    a, b = Exporter(0), Exporter(0)
    try:
        a.train(1, 1.0, 1.0)
        b.train(2, 2.0, 2.0)
        assert "dfa_step 1.0" in scrape(a.port) and "dfa_step 2.0" in scrape(b.port)
    finally:
        a.close()
        b.close()


def test_a_run_exports_its_figures(tmp_path):
    from dfa_async import train

    from conftest import small_config

    ex = Exporter(0)
    try:
        res = train(small_config(alignment={"every": 8, "probe_size": 16}), tmp_path / "r", metrics=ex)
        text = scrape(ex.port)
    finally:
        ex.close()
    assert f"dfa_test_accuracy {res.test_accuracy}" in text
    assert f"dfa_step {res.steps - 1}.0" in text
    assert 'dfa_alignment_cosine{block="1"}' in text


def stage_ops(run_dir, stage, op):
    from dfa_async import runlog

    return [k for r in runlog.read(run_dir / "events.msgpack", "timeline") if r["stage"] == stage
            for o, k in zip(r["op"], r["staleness"]) if o == op]


def value(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in the scrape")


def test_stage_figures_agree_with_the_event_log(tmp_path):
    from dfa_async import runlog, train

    from conftest import small_config

    ex = Exporter(0)
    try:
        res = train(small_config(runtime={"depth": 2, "blocks_per_stage": [1, 2]}), tmp_path / "r", metrics=ex)
        text = scrape(ex.port)
    finally:
        ex.close()
    assert value(text, "dfa_steps_total") == res.steps
    assert value(text, "dfa_samples_total") == res.steps * 16
    for s in (0, 1):
        assert value(text, f'dfa_stage_forward_seconds_count{{replica="0",stage="{s}"}}') == len(stage_ops(tmp_path / "r", s, "forward"))
        assert value(text, f'dfa_stage_update_seconds_count{{replica="0",stage="{s}"}}') == len(stage_ops(tmp_path / "r", s, "update"))
        assert value(text, f'dfa_stage_staleness{{replica="0",stage="{s}"}}') == stage_ops(tmp_path / "r", s, "update")[-1]
        assert 0 <= value(text, f'dfa_stage_idle_fraction{{replica="0",stage="{s}"}}') < 1
        last = [r for r in runlog.read(tmp_path / "r" / "events.msgpack", "timeline") if r["stage"] == s][-1]
        assert value(text, f'dfa_stage_in_flight_steps{{replica="0",stage="{s}"}}') == last["in_flight"] == 2  # D = 2
        assert value(text, f'dfa_stage_stash_bytes{{replica="0",stage="{s}"}}') == last["stash_bytes"] > 0
        assert value(text, f'dfa_stage_peak_memory_bytes{{memory="host",replica="0",stage="{s}"}}') == last["peak_rss_bytes"] > 1e6
    assert runlog.read(tmp_path / "r" / "events.msgpack", "metrics")[0]["port"] == ex.port


def test_a_taken_port_is_a_one_line_error(tmp_path, capsys):
    from dfa_async import cli

    ex = Exporter(0)
    try:
        assert cli.main(["train", "--set", "data.name=synthetic", "--set", f"metrics.port={ex.port}",
                         "--set", "runtime.backend=local", "--no-progress"]) == 2
    finally:
        ex.close()
    err = capsys.readouterr().err
    assert f"metrics.port: cannot serve on 127.0.0.1:{ex.port}" in err and err.count("\n") == 1


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Prometheus (Debian's prometheus) is not installed")
def test_a_real_prometheus_scrapes_a_run(tmp_path):
    """Prometheus on 127.0.0.1 scrapes the exporter every 200 ms during a real run; its series match the
    event log."""
    import json
    import subprocess
    import time
    import urllib.parse

    from dfa_async import train

    from conftest import small_config

    ex = Exporter(0)
    prom_port = free_port()
    (tmp_path / "prom.yml").write_text(
        "global: {scrape_interval: 200ms}\n"
        f"scrape_configs:\n  - job_name: dfa-async\n    static_configs:\n      - targets: ['127.0.0.1:{ex.port}']\n")
    prom = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prom.yml'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def query(q):
        url = f"http://127.0.0.1:{prom_port}/api/v1/query?query={urllib.parse.quote(q)}"
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)["data"]["result"]

    try:
        res = train(small_config(runtime={"depth": 2, "blocks_per_stage": [1, 2]}, train={"epochs": 3}), tmp_path / "r",
                    metrics=ex)
        deadline, got = time.time() + 60, []
        while time.time() < deadline:
            try:
                got = query("dfa_steps_total")
                if got and float(got[0]["value"][1]) == res.steps:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert got and float(got[0]["value"][1]) == res.steps, got
        acc = query("dfa_test_accuracy")
        assert float(acc[0]["value"][1]) == pytest.approx(res.test_accuracy)
        counts = query("dfa_stage_forward_seconds_count")
        assert {r["metric"]["stage"]: float(r["value"][1]) for r in counts} == {
            "0": len(stage_ops(tmp_path / "r", 0, "forward")), "1": len(stage_ops(tmp_path / "r", 1, "forward"))}
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        ex.close()
