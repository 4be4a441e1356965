"""Backprop baselines on the same Ray workers as the DFA stages: pipeline-parallel (`gpipe`, `1f1b`, with
torch.distributed.pipelining) and data-parallel (`ddp`)."""
from .group import BackpropGroup
from .worker import KINDS, BackpropWorker

__all__ = ["BackpropGroup", "BackpropWorker", "KINDS"]
