"""What the driver, the bench and the accuracy runner call on a pipeline: the single-process reference
(`reference.LocalPipeline`) and the layer-parallel runtime (`runtime.RayPipeline`) both implement it, and
the driver never asks which one it has."""
from __future__ import annotations

from typing import Any, Protocol

from torch import nn

from .stage import Window


class Pipeline(Protocol):
    restarts: int  # stage failures survived so far

    def submit(self, start: int, stop: int) -> Any:
        """Start window [start, stop) of the schedule; returns a handle for `collect`."""

    def collect(self, handle: Any) -> Window:
        """The window's losses and timelines, once it has run (StageFailure if a stage died)."""

    def evaluate(self) -> tuple[float, float]:
        """Test accuracy and mean loss, at a drained boundary."""

    def state(self) -> dict:
        """Every block's state (weights, buffers, optimizer), per block: independent of placement."""

    def load_state(self, state: dict) -> None: ...

    def align(self, n: int, data: str = "train", mode: str = "train") -> list[dict]:
        """Alignment of every block on the first n samples of `data` (see probe.py)."""

    def model(self) -> nn.Sequential: ...

    def describe(self) -> dict | None:
        """The event log's `stages` record (processes, devices, the data plane), None without stages of
        their own."""

    def warnings(self) -> list[str]:
        """What the user should know about this placement before the run starts."""

    def restart(self) -> None:
        """Replace every stage after a failure; ConfigError if they can no longer be placed."""

    def close(self) -> None: ...
