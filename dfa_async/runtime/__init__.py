"""The layer-parallel runtime: Ray for placement, lifecycle and failures (the control plane,
`cluster`), torch.distributed among the stage actors for every tensor (the data plane, `plane`),
each stage carrying out its own part of the schedule (`worker`), steered by the driver (`pipeline`)."""
from .pipeline import RayPipeline

__all__ = ["RayPipeline"]
