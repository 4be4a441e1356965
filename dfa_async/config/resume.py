"""What a resumed run may change: settings that say where and how to run, not what is learned (the
runtime is tested to learn the same weights under any placement), and the run's length (EXTENDABLE: a run
resumed with a larger train.max_steps or train.epochs goes on to the new end, its learning-rate schedule
following the new total from then on); any other change is refused."""
from __future__ import annotations

from .loading import upgrade
from .schema import SECTIONS, Config

NOT_LEARNED = ({"train.root", "train.name", "train.log_every", "train.eval_batch_size", "data.dir", "data.url",
                "checkpoint.keep", "train.on_nonfinite"}
               | {f"runtime.{k}" for k in ("backend", "blocks_per_stage", "num_stages", "address", "threads", "num_cpus",
                                            "placement", "transport", "window", "peer_timeout_s", "device",
                                            "gpus_per_stage", "max_failures", "autoscale", "placement_timeout_s", "replicas",
                                            "sync_batchnorm")})


EXTENDABLE = {"train.max_steps", "train.epochs"}


def differences(old: dict, new: dict, learned_only: bool = False) -> list[str]:
    """`section.key: old -> new` for every setting that differs between two `to_dict()`s (with
    `learned_only`, leaving out NOT_LEARNED, EXTENDABLE and the metrics and alignment sections). A setting missing
    from `old` (a run of a version without it) counts as its default."""
    out, defaults, old = [], Config().to_dict(), upgrade(old, quiet=True)
    for section in SECTIONS:
        a, b = {**defaults.get(section, {}), **old.get(section, {})}, new.get(section, {})
        for key in sorted(set(a) | set(b)):
            name = f"{section}.{key}"
            if learned_only and (name in NOT_LEARNED | EXTENDABLE or section in ("metrics", "alignment")):
                continue
            if a.get(key) != b.get(key):
                out.append(f"{name}: {a.get(key)!r} -> {b.get(key)!r}")
    return out
