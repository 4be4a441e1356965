"""Interconnects between workers (a model, for the simulator): latency (s), bandwidth (bytes/s), and whether the workers' own cores move the
bytes (`host`: shared memory or TCP between processes on CPUs, where a transfer also keeps the sender and
the receiver busy) or a DMA engine / NIC does (GPUs). Presets are nominal figures of the hardware, per
direction; "measured" comes from the bench's ping-pong on this machine."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Interconnect:
    latency_s: float
    bandwidth: float
    host: bool = False
    per_message_s: float = 0.0  # CPU time a worker spends per message it sends or receives (software)
    allreduce_rate: float = 0.0  # bytes/s of a measured 2-worker all-reduce (0: from bandwidth and latency)


PRESETS = {
    # NVLink 4 (H100 SXM): ~450 GB/s per direction; NCCL point-to-point latency ~10 us.
    "nvlink": Interconnect(10e-6, 450e9),
    # PCIe 5.0 x16: ~64 GB/s nominal, ~50 GB/s achieved; ~15 us.
    "pcie": Interconnect(15e-6, 50e9),
    # 100 Gb Ethernet between nodes: 12.5 GB/s nominal, ~11 GB/s achieved; ~30 us with TCP/RoCE.
    "ethernet-100g": Interconnect(30e-6, 11e9),
}


def get(name: str, measured: dict | None = None) -> Interconnect:
    if name == "measured":
        if not measured:
            raise ValueError("--link: measured needs a profile written by `dfa-async bench` (it holds the "
                             "ping-pong of this machine)")
        return Interconnect(**measured)
    if name not in PRESETS:
        raise ValueError(f"--link: {name!r}; choose one of {', '.join([*PRESETS, 'measured'])}")
    return PRESETS[name]


def transfer_s(link: Interconnect, nbytes: float) -> float:
    return link.latency_s + nbytes / link.bandwidth


def as_dict(link: Interconnect) -> dict:
    return asdict(link)
