"""Prometheus exporter of the driver's figures (names prefixed `dfa_`), on its own registry so several
runs in one process never collide. Per-stage figures come from the op timestamps every stage returns
with its window (no HTTP server per actor)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from . import windows

STAGE = ["stage", "replica"]  # a stage actor: stage k of replica r (replica 0 without runtime.replicas)
OP_SECONDS = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # a 16-wide block .. a wide block on a CPU


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
        self.pre_cosine = g("dfa_alignment_pre_cosine", "Mean per-sample cosine at the block's pre-activation.",
                            ["block"])
        self.angle = g("dfa_alignment_update_angle_degrees", "Angle between the DFA and BP updates.", ["block"])
        self.steps = Counter("dfa_steps", "Training steps done (every op of every stage).", registry=self.registry)
        self.samples = Counter("dfa_samples", "Training samples seen.", registry=self.registry)
        self.restarts = Counter("dfa_restarts", "Times the stages were replaced after a failure.",
                                registry=self.registry)
        h = lambda name, doc: Histogram(name, doc, STAGE, buckets=OP_SECONDS, registry=self.registry)  # noqa: E731
        self.forward_s = h("dfa_stage_forward_seconds", "Seconds of each forward op, per stage.")
        self.update_s = h("dfa_stage_update_seconds", "Seconds of each update op, per stage.")
        self.idle = g("dfa_stage_idle_fraction", "Share of the last window a stage spent waiting.", STAGE)
        self.staleness = g("dfa_stage_staleness", "Staleness of the stage's last update (D - 1 in steady "
                           "state).", STAGE)
        self.in_flight = g("dfa_stage_in_flight_steps", "Most steps forwarded but not yet updated during the "
                           "last window (D at most).", STAGE)
        self.stash = g("dfa_stage_stash_bytes", "Most bytes of activations held for in-flight updates during the "
                       "last window.", STAGE)
        self.memory = g("dfa_stage_peak_memory_bytes", "Peak memory of the stage's process: host (RSS) and, on a "
                        "GPU, device (allocated).", STAGE + ["memory"])
        self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)
        self.host = host
        self.port = self.server.server_port

    def train(self, step: int, loss: float, samples_per_s: float) -> None:
        self.step.set(step)
        self.loss.set(loss)
        self.throughput.set(samples_per_s)

    def window(self, win, samples: int) -> None:
        """A finished window (a stage.Window): its steps, and each stage actor's ops (op, step, start, end,
        staleness) and peaks (Stage.take_stats), labelled with its stage and replica."""
        for i, st in enumerate(win.stats or []):
            at = self._labels(win, i)
            self.in_flight.labels(**at).set(st["in_flight"])
            self.stash.labels(**at).set(st["stash_bytes"])
            self.memory.labels(**at, memory="host").set(st["peak_rss_bytes"])
            if "peak_device_bytes" in st:
                self.memory.labels(**at, memory="device").set(st["peak_device_bytes"])
        self.steps.inc(win.stop - win.start)
        self.samples.inc(samples)
        for i, ops in enumerate(win.timelines):
            if not ops:
                continue
            at = self._labels(win, i)
            for op, _, a, b, _ in ops:
                if op in ("forward", "update"):
                    (self.forward_s if op == "forward" else self.update_s).labels(**at).observe(b - a)
            self.idle.labels(**at).set(windows.idle(*windows.busy(ops)))
            updates = [k for op, _, _, _, k in ops if op == "update"]
            if updates:
                self.staleness.labels(**at).set(updates[-1])

    @staticmethod
    def _labels(win, i: int) -> dict:
        stage, replica = win.where(i)
        return {"stage": str(stage), "replica": str(replica)}

    def restart(self) -> None:
        self.restarts.inc()

    def eval(self, step: int, accuracy: float, loss: float) -> None:
        self.accuracy.set(accuracy)
        self.test_loss.set(loss)

    def alignment(self, step: int, blocks: list[dict]) -> None:
        for b in blocks:
            self.cosine.labels(block=str(b["block"])).set(b["cos_mean"])
            self.angle.labels(block=str(b["block"])).set(b["update_angle"])
            if "pre_cos_mean" in b:
                self.pre_cosine.labels(block=str(b["block"])).set(b["pre_cos_mean"])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
