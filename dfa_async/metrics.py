"""Prometheus exporter of the driver's figures (names prefixed `dfa_`), on its own registry so several
runs in one process never collide."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, start_http_server


class Exporter:
    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.registry = CollectorRegistry()
        g = lambda name, doc, labels=(): Gauge(name, doc, labels, registry=self.registry)  # noqa: E731
        self.step = g("dfa_step", "Last step whose forward was submitted.")
        self.loss = g("dfa_train_loss", "Training loss (mean over the batch) at the last logged step.")
        self.throughput = g("dfa_samples_per_second", "Training samples per second since the run started.")
        self.accuracy = g("dfa_test_accuracy", "Test accuracy at the last evaluation, in [0, 1].")
        self.test_loss = g("dfa_test_loss", "Test loss at the last evaluation.")
        self.cosine = g("dfa_alignment_cosine", "Mean per-sample cosine between B_k e and dL/dh_k.", ["block"])
        self.angle = g("dfa_alignment_update_angle_degrees", "Angle between the DFA and BP updates.", ["block"])
        self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = self.server.server_port

    def train(self, step: int, loss: float, samples_per_s: float) -> None:
        self.step.set(step)
        self.loss.set(loss)
        self.throughput.set(samples_per_s)

    def eval(self, step: int, accuracy: float, loss: float) -> None:
        self.accuracy.set(accuracy)
        self.test_loss.set(loss)

    def alignment(self, step: int, blocks: list[dict]) -> None:
        for b in blocks:
            self.cosine.labels(block=str(b["block"])).set(b["cos_mean"])
            self.angle.labels(block=str(b["block"])).set(b["update_angle"])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
