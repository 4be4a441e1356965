"""A stage: one or more consecutive blocks with their learners. The single-process reference is one
stage holding every block; the distributed trainer runs one stage per actor. Both carry out the same
ops of the same schedule, which is why placement never changes what is learned."""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import feedback, model as models, optim, partition, replica, rules, schedule
from .config import Config, ConfigError


@dataclass
class Window:
    """What the stages report after running window [start, stop) of the schedule: the head's loss of
    every step and each stage's op timestamps (op, step, start, end, staleness). With replicas, one
    timeline per stage actor: entry r * stages + k is stage k of replica r."""
    start: int
    stop: int
    losses: list[float]
    timelines: list[list]
    stats: list[dict] | None = None  # per stage actor: Stage.take_stats()
    replicas: int = 1

    def where(self, i: int) -> tuple[int, int]:
        """(stage, replica) of timeline i."""
        n = len(self.timelines) // self.replicas
        return i % n, i // n


def assemble(parts: list[dict]) -> torch.nn.Sequential:
    """The model from the stages' `modules()` (block index -> block), in block order."""
    blocks = {}
    for part in parts:
        blocks.update(part)
    return torch.nn.Sequential(*[blocks[k] for k in sorted(blocks)])


class Clock:
    """When ops start and end, in host seconds. On a CPU the host clock. On a GPU a host clock around
    asynchronous kernels would time their launch, so each mark is a CUDA event on the stage's stream,
    turned into host time when the timeline is taken (one device sync per window): an anchor event
    recorded then completes at the host time the sync returns."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def now(self):
        if not self.cuda:
            return time.time()
        mark = torch.cuda.Event(enable_timing=True)
        mark.record()
        return mark

    def resolve(self, timeline: list) -> list:
        if not self.cuda or not timeline:
            return timeline
        anchor = torch.cuda.Event(enable_timing=True)
        anchor.record()
        anchor.synchronize()
        at = time.time()

        def host(mark):
            return at - mark.elapsed_time(anchor) / 1e3
        return [(op, step, host(a), host(b), stale) for op, step, a, b, stale in timeline]


class StageFailure(RuntimeError):
    """A stage died (its process was lost) or lost a peer; the driver restarts the stages from the last
    checkpoint."""


class Plan:
    """What every stage needs to know about the whole model (shapes, step counts), computed once by
    the driver and sent to the stages: small and picklable.

    The tensor contract. A sample is a float tensor of `in_shape`, or (`window` > 0) `window` token ids.
    For token inputs every tensor after the first block keeps the positions in front, (batch, window,
    features...), and the loss and error are per position: the head's output is (batch, window, classes)
    and its labels (batch, window). The error e has per-sample shape `error_shape` (the head's output, or
    its input under feedback.error_at = hidden); a hidden block's feedback matrix maps e's features at a
    position to the block's features at that position: `error_features` x `features[k]`, the same matrix
    for every position."""

    def __init__(self, cfg: Config, in_shape: tuple[int, ...], classes: int, total_steps: int,
                 steps_per_epoch: int, net: torch.nn.Sequential | None = None, window: int = 0):
        self.cfg, self.in_shape, self.classes = cfg, tuple(in_shape), classes
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.window = window
        self.in_dtype = torch.int64 if window else torch.float32
        self.positions = (window,) if window else ()
        self.act_dtype = torch.bfloat16 if cfg.train.dtype == "bfloat16" else torch.float32  # of every link
        # Where the schedule drains (epoch ends, checkpoints, the last step): the same for every stage.
        self.boundaries = schedule.boundaries(total_steps, steps_per_epoch, cfg.checkpoint.every, cfg.train.eval_every)
        self.net = net  # a user's own model (blocks of an nn.Sequential); None builds cfg.model
        net = self.shell()
        self.out_shapes = models.output_shapes(net, self.in_shape, self.in_dtype)
        self.num_blocks = len(net)
        p = len(self.positions)
        if any(s[:p] != self.positions for s in self.out_shapes):
            raise ConfigError(f"model: every block must keep the {p} position dim(s) {self.positions} in front of its "
                              f"output; the outputs are {self.out_shapes}")
        self.features = [math.prod(s[p:]) for s in self.out_shapes]
        # feedback.error_at = hidden: the head broadcasts dL/d(its input), which its own backward gives
        self.hidden_error = cfg.feedback.error_at == "hidden" and cfg.feedback.rule == "dfa" and self.num_blocks > 1
        self.error_shape = self.out_shapes[-2] if self.hidden_error else self.out_shapes[-1]
        self.error_features = math.prod(self.error_shape[p:])
        fb = cfg.feedback
        if fb.init in ("identity", "wishart") and fb.rule == "dfa" and any(f != self.error_features
                                                                          for f in self.features[:-1]):
            raise ConfigError(f"feedback.init: {fb.init} needs e as wide as every hidden block (e has "
                              f"{self.error_features} features, the blocks {self.features[:-1]}); use "
                              "feedback.error_at = hidden on a model whose blocks keep one width (gpt), or init "
                              "gaussian, uniform, orthogonal or sign")
        sizes = cfg.runtime.blocks_per_stage
        if isinstance(sizes, list) and sizes and sum(sizes) != self.num_blocks:
            raise ConfigError(f"runtime.blocks_per_stage: {sizes} holds {sum(sizes)} blocks but "
                              f"the model has {self.num_blocks}; make the counts add up to {self.num_blocks}")
        # "auto": left for balance.resolve, which measures the blocks (a plan only describes)
        self.stage_sizes = None if sizes == "auto" else sizes or [1] * self.num_blocks
        self.block_costs: list[float] | None = None  # seconds per block, where "auto" measured them

    def build(self) -> torch.nn.Sequential:
        """A fresh copy of the whole initial model."""
        if self.net is not None:
            return copy.deepcopy(self.net)
        return models.build(self.cfg, self.in_shape, self.classes)

    def shell(self) -> torch.nn.Sequential:
        """The model's structure without its memory (meta tensors): shapes, block count."""
        return self.net if self.net is not None else models.skeleton(self.cfg, self.in_shape, self.classes)

    def blocks(self, ids: list[int], device) -> dict[int, torch.nn.Module]:
        """Fresh copies of blocks `ids` alone, on `device`: a stage builds its own blocks and no other."""
        if self.net is not None:
            return {k: copy.deepcopy(self.net[k]).to(device) for k in ids}
        return models.build_blocks(self.cfg, self.in_shape, self.classes, ids, device)

    def partition(self) -> list[list[int]]:
        """Block indices of each stage (runtime.blocks_per_stage; default one block per stage; "auto": balanced)."""
        if self.stage_sizes is None:
            raise RuntimeError("runtime.blocks_per_stage = auto: balance.resolve(plan) measures the blocks first")
        return partition.ranges(self.stage_sizes)


class Stage:
    """Blocks k..m of the model with their learners and one optimizer. forward/update are the schedule's
    ops; the head stage turns its output into the loss and the error e.

    Replicas (runtime.replicas): this stage is replica `part` of `parts`, seeing that share of each
    minibatch's rows, and `reduce(tensor) -> tensor` sums a tensor over the stage's replicas (blocking;
    every replica calls it in the same order). The gradients are summed before every step, so every
    replica steps alike (replica.py has the rest)."""

    def __init__(self, plan: Plan, blocks: list[int], device: torch.device | str = "cpu", part: int = 0,
                 parts: int = 1, reduce=None):
        cfg = plan.cfg
        self.plan, self.cfg, self.ids = plan, cfg, list(blocks)
        self.parts, self.reduce, self.flat = parts, reduce, None
        rows = None
        if parts > 1:
            rows = replica.Rows(part, parts, cfg.train.batch_size, reduce if cfg.runtime.sync_batchnorm else None)
        net = plan.blocks(self.ids, device)
        last = plan.num_blocks - 1
        self.hidden_error = plan.hidden_error
        predict = cfg.runtime.weight_prediction
        self.learners = []
        for k in self.ids:
            is_head = k == last
            B = None
            if not is_head and cfg.feedback.rule == "dfa":
                B = feedback.matrix(k, plan.features[:-1], plan.error_features, cfg.feedback.init,
                                    cfg.feedback.normalization, cfg.train.seed).to(device)
            keep = elements = None
            bn = cfg.bottleneck
            if bn.block == k and bn.form == "mask":
                keep = rules.bottleneck_units(plan.out_shapes[k][0], bn.width, cfg.train.seed).to(device)
            if bn.block == k and bn.form == "elements":
                elements = {name: m.to(device) for name, m in
                            rules.bottleneck_elements(net[k], bn.width, plan.out_shapes[k][0], cfg.train.seed).items()}
            self.learners.append(rules.Learner(
                net[k], k, rule=cfg.feedback.rule, is_head=is_head, B=B, out_shape=plan.out_shapes[k],
                seed=cfg.train.seed, keep_units=keep, error_scale=cfg.feedback.error_scale, keep_elements=elements,
                positions=len(plan.positions), input_grad=is_head and self.hidden_error, act_dtype=plan.act_dtype,
                stash_weights=(cfg.runtime.weight_stashing or predict) and cfg.runtime.depth > 1, rows=rows))
        # One optimizer over every learning block: one call per update.
        self.learning = [learner for learner in self.learners if learner.learns]
        self.sizes = [len(list(learner.block.parameters())) for learner in self.learning]
        self.opt = optim.make([p for learner in self.learning for p in learner.block.parameters()], cfg.optim)
        self.head_errors: dict[int, torch.Tensor] = {}  # error_at = hidden: the head's own e, until its update
        self.decay = optim.decayed([p for learner in self.learning for p in learner.block.parameters()], cfg.optim)
        self.prediction = (optim.Prediction(self.opt, self.decay, cfg.optim.weight_decay)
                           if predict and self.opt is not None else None)
        self.is_head = self.ids[-1] == last
        self.skip_nonfinite = cfg.train.on_nonfinite == "skip"
        # Timestamps of every op: (op, step, start, end, staleness); bubbles show as gaps.
        self.clock = Clock(torch.device(device))
        self.timeline: list[tuple[str, int, float, float, int]] = []
        self.peaks = {"in_flight": 0, "stash_bytes": 0}  # since the last take_timeline

    def forward(self, step: int, x, y=None):
        """Run the stage's blocks on x; the head stage also takes the labels and returns (loss, e), the
        loss a 0-d tensor."""
        t0 = self.clock.now()
        with self._ahead():
            h = x
            for learner in self.learners:
                h = learner.forward(step, h)
            out = h
            if self.is_head:
                loss, e = rules.head_error(h.detach(), y, self.cfg.feedback.error_scale, self.parts)
                if self.hidden_error:  # every other block's error: e taken back through the head
                    self.head_errors[step] = e
                    e = self.learners[-1].input_gradient(step, e)
                out = loss, e
        self.timeline.append(("forward", step, t0, self.clock.now(), 0))
        if self.learning:
            peaks = self.peaks
            peaks["in_flight"] = max(peaks["in_flight"], max(len(learner.stash) for learner in self.learning))
            peaks["stash_bytes"] = max(peaks["stash_bytes"],
                                       sum(sum(learner.stash_bytes.values()) for learner in self.learning))
        return out

    def _ahead(self):
        """runtime.weight_prediction: the weights moved by the updates of the steps still in flight (those
        forwarded, not yet updated: the same on every stage, whatever the placement), at their rates."""
        pending = self.learning[0].stash if self.prediction is not None else ()
        if not pending:
            return contextlib.nullcontext()
        lr = sum(optim.lr_at(self.cfg.optim, j, self.plan.total_steps, self.plan.steps_per_epoch) for j in pending)
        return self.prediction.ahead(lr, self.learning[0].updates)  # every update steps the optimizer once

    def update(self, step: int, e: torch.Tensor) -> list[int]:
        """Apply step's update on every block of the stage; return each learning block's staleness."""
        t0 = self.clock.now()
        # train.on_nonfinite = skip: every stage sees the same e, so every stage skips the same steps
        # (one device sync per update; the default, stop, leaves the check to the driver's window).
        own = self.head_errors.pop(step, None)
        if self.skip_nonfinite and not self._finite(e):
            for learner in self.learners:
                learner.drop(step)
            self.timeline.append(("skip", step, t0, self.clock.now(), 0))
            return []
        lr = optim.lr_at(self.cfg.optim, step, self.plan.total_steps, self.plan.steps_per_epoch)
        stale = rules.update(self.learners, self.opt, step, e, lr, own,
                             lambda: optim.before_step([learner.block for learner in self.learning], self.cfg.optim,
                                                       lr, self.decay),
                             self._sum_grads if self.parts > 1 else None)
        self.timeline.append(("update", step, t0, self.clock.now(), max(stale, default=0)))
        return stale

    def _finite(self, e: torch.Tensor) -> bool:
        """Whether e is finite; with replicas, whether every replica's is (they must skip alike)."""
        bad = torch.tensor([0.0 if bool(torch.isfinite(e).all()) else 1.0], device=e.device)
        return not bool((self.reduce(bad) if self.parts > 1 else bad).item())

    def _sum_grads(self, params: list[torch.Tensor]) -> None:
        """Every gradient summed over the replicas: one flat message per update, in a buffer kept from
        step to step (the gradients become views of the sum until the step drops them)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        n = sum(g.numel() for g in grads)
        if self.flat is None or self.flat.numel() != n:
            self.flat = torch.empty(n, dtype=grads[0].dtype, device=grads[0].device)
        total = self.reduce(torch.cat([g.flatten() for g in grads], out=self.flat))
        for p, g in zip(params, total.split([g.numel() for g in grads])):
            p.grad = g.view_as(p)

    def take_timeline(self) -> list:
        out, self.timeline = self.clock.resolve(self.timeline), []
        return out

    def take_stats(self) -> dict:
        """Peaks since the last call: steps in flight (forwarded, not yet updated), bytes their stash holds,
        and the process's peak memory (host RSS; on a GPU also the device's allocated peak)."""
        import resource

        out = dict(self.peaks, peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        device = next(self.learners[0].block.parameters()).device
        if device.type == "cuda":
            out["peak_device_bytes"] = torch.cuda.max_memory_allocated(device)
        self.peaks = {"in_flight": 0, "stash_bytes": 0}
        return out

    @torch.no_grad()
    def evaluate(self, x, y=None):
        """The stage's blocks in eval mode; the head stage, given labels, returns (correct, summed loss)."""
        for learner in self.learners:
            learner.block.eval()
        try:
            for learner in self.learners:
                x = learner.apply(x)
        finally:
            for learner in self.learners:
                learner.block.train()
        if y is None:
            return x
        # per sample, or per position of a sequence (the classes last)
        return (x.argmax(-1) == y).sum(), F.cross_entropy(x.flatten(0, -2), y.flatten(), reduction="sum")

    def state(self) -> dict:
        out = {str(k): learner.state() for k, learner in zip(self.ids, self.learners)}
        first = 0
        for learner, n in zip(self.learning, self.sizes):
            out[str(learner.index)]["optim"] = optim.part_state(self.opt, first, n)
            first += n
        return out

    def load_state(self, state: dict) -> None:
        self.head_errors.clear()
        for k, learner in zip(self.ids, self.learners):
            learner.load_state(state[str(k)])
        if self.opt is not None:
            optim.load_part_states(self.opt, [state[str(learner.index)]["optim"] for learner in self.learning])

    def probe(self, mode: str = "train"):
        """The stage's side of an alignment probe on its blocks as they are now (see probe.py)."""
        from .probe import StageProbe

        plan, cfg = self.plan, self.cfg
        last = plan.num_blocks - 1
        if not hasattr(self, "_probe_Bs"):
            device = next(self.learners[0].block.parameters()).device
            self._probe_Bs = {k: feedback.matrix(k, plan.features[:-1], plan.error_features, cfg.feedback.init,
                                                 cfg.feedback.normalization, cfg.train.seed).to(device)
                              for k in self.ids if k != last}
        return StageProbe(self.modules(), self._probe_Bs, last, cfg.feedback.error_scale, cfg.train.seed, mode,
                          len(plan.positions), plan.hidden_error)

    def modules(self) -> dict[int, torch.nn.Module]:
        return {k: learner.block for k, learner in zip(self.ids, self.learners)}
