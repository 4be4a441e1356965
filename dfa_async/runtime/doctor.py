"""`dfa-async doctor`: for the run's settings and the cluster it would run on, the plan (stages, blocks,
node and GPU of each, the transport of each channel and why) and one ping through every channel of the
data plane, before any training. A stage pair that cannot talk ends it with one line naming the pair.
Users run it first on a new cluster."""
from __future__ import annotations

import copy

from .. import balance, data, wire
from ..config import Config, ConfigError
from ..run import step_counts
from ..stage import Plan, StageFailure

CONNECT_S = 10.0  # the doctor waits at most this long for each channel (training waits runtime.peer_timeout_s)


class Unreachable(RuntimeError):
    """Two stages cannot talk (one line naming them)."""


def channel_rows(world: int, transport: str, why: str, cycles: list[float | None], replica: int = 0) -> list[dict]:
    """Each channel (of replica `replica`'s pipeline) with what it carries and the round trip of the ping
    cycle that first passed it (wire.ping: cycle k runs k -> k + 1 -> … -> head -> k and is timed by stage k)."""
    head, rows = world - 1, []
    for src, dst in wire.channels(world):
        act = dst == src + 1
        k = src if act else dst
        rows.append({"channel": (src, dst), "replica": replica, "carries": "activations" if act else "errors",
                     "transport": transport, "why": why, "cycle": k,
                     "round_trip_s": cycles[k] if k < len(cycles) else None,
                     "path": " -> ".join(map(str, [*range(k, head + 1), k]))})
    return rows


def doctor(cfg: Config, out=print) -> list[dict]:
    """Place and connect the stages as `train` would, print the plan, ping every channel; return the
    channel rows. Raises Unreachable (a pair that cannot talk) or ConfigError (settings that cannot run)."""
    from .pipeline import RayPipeline

    if cfg.runtime.backend != "ray":
        raise ConfigError("runtime.backend: local runs in this process and has no data plane to check; "
                          "the doctor checks runtime.backend = ray")
    cfg = copy.deepcopy(cfg)
    cfg.runtime.peer_timeout_s = min(cfg.runtime.peer_timeout_s, CONNECT_S)
    ds = data.for_run(cfg)
    total, spe = step_counts(cfg, ds.samples)
    plan = balance.resolve(Plan(cfg, ds.shape, ds.classes, total, spe, window=ds.window))
    pipe = RayPipeline(plan, ds)
    try:
        n, R = len(pipe.partition), pipe.replicas
        grid = f"{n} stage(s) x {R} replicas" if R > 1 else f"{n} stage(s)"
        out(f"dfa-async doctor: {grid} on {len(set(pipe.ips))} node(s), device {pipe.device}, "
            f"transport {pipe.transport} ({pipe.why})" + (f", replicas' sums over {pipe.bound[0].get('replicas')}"
                                                          if R > 1 else ""))
        out(f"{'stage':>5} {'replica':>7}  {'blocks':<10} {'node':<16} {'gpus':<6} {'bound':<16} buffers")
        for row in pipe.plan_rows():
            out(f"{row['stage']:>5} {row['replica']:>7}  {','.join(map(str, row['blocks'])):<10} {row['node'] or '?':<16} "
                f"{','.join(row['gpus']) or '-':<6} {row.get('host') or '-':<16} {row.get('buffers', '-')}")
        if pipe.lost is not None:
            raise Unreachable(_one_line(pipe.lost))
        if n == 1:
            out("dfa-async doctor: one stage, no channel to check")
            return []
        try:
            cycles = pipe.ping()
        except StageFailure as err:
            raise Unreachable(_one_line(err)) from None
        rows = [row for r in range(R) for row in channel_rows(n, pipe.transport, pipe.why, cycles[r * n:(r + 1) * n], r)]
        out(f"{'channel':<20} {'replica':>7}  {'carries':<12} {'transport':<10} {'round trip':>11}  ping cycle")
        for r in rows:
            src, dst = r["channel"]
            out(f"{f'stage {src} -> stage {dst}':<20} {r['replica']:>7}  {r['carries']:<12} {r['transport']:<10} "
                f"{r['round_trip_s'] * 1e3:>8.2f} ms  {r['path']}")
        out(f"dfa-async doctor: all {len(rows)} channels answered")
        return rows
    finally:
        pipe.close()


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0]
    return text.removeprefix("a stage failed (").removesuffix(")")
