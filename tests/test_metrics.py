"""The Prometheus exporter over real HTTP on 127.0.0.1."""
import urllib.request

from dfa_async.metrics import Exporter


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
