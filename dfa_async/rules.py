"""The learning rules for one block: DFA, BP and shallow; the alignment measures (cosines, update
angles; probe.py applies them); bottleneck masks.
Nothing here knows about Ray or about any particular model."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import feedback, seeding


def head_error(logits: torch.Tensor, y: torch.Tensor, scale: str = "mean", parts: int = 1):
    """Cross-entropy loss (mean over the batch, or over every position of a sequence; for logging, a
    tensor, so a GPU stage never waits for it) and the error e every stage receives: `sum` and `paper`:
    softmax - onehot(y) per sample (per position); `mean`: the same divided by the number of labels.
    (Under `paper` the head itself learns from e / labels: Learner.signal.) The classes are the last dim.
    `parts`: y is one of that many replicas' equal shares of the minibatch, and `mean` divides by the
    whole minibatch's labels (replica.py)."""
    with torch.no_grad():
        logp = torch.log_softmax(logits, dim=-1)
        loss = F.nll_loss(logp.flatten(0, -2), y.flatten())
        e = logp.exp_()
        e.scatter_add_(-1, y[..., None], torch.full((*y.shape, 1), -1.0, dtype=e.dtype, device=e.device))
        if scale == "mean":
            e.mul_(1.0 / (y.numel() * parts))
    return loss, e


class _Live:
    __slots__ = ("base", "size", "stride", "offset")


class stash_hooks(torch.autograd.graph.saved_tensors_hooks):
    """Autograd keeps a reference to the *live* parameter or buffer instead of a versioned copy.

    With depth D > 1 a block's optimizer steps (in place) between a step's forward and its update, and
    later forwards overwrite batchnorm running statistics: autograd would refuse the stale graph. The
    update of step t uses the activations stashed at forward(t) and the block's current parameters where
    its backward needs them (only inside the block: e.g. the batchnorm scale when it sits behind a
    linear layer), so no weights are stashed (PipeDream without weight stashing). `weights`: instead a copy
    of each weight the backward reads, as this forward saw it (PipeDream's weight stashing). One instance
    per block, entered at every forward: parameters are updated in place, so their storages never change."""

    def __init__(self, module: nn.Module, weights: bool = False):
        self.saved_bytes = 0  # bytes of the tensors saved for backward so far (the stash's weight)
        live = {}
        for t in list(module.parameters()) + list(module.buffers()):
            live[t.untyped_storage().data_ptr()] = t

        def pack(t):
            if t.device.type != "meta":
                base = live.get(t.untyped_storage().data_ptr())
                if base is not None and weights:  # weight stashing: the weights as this forward saw them
                    self.saved_bytes += t.numel() * t.element_size()
                    return t.detach().clone()
                if base is not None:
                    ref = _Live()
                    ref.base, ref.size, ref.stride, ref.offset = base, t.size(), t.stride(), t.storage_offset()
                    return ref
            self.saved_bytes += t.numel() * t.element_size()
            return t

        def unpack(obj):
            if isinstance(obj, _Live):
                return obj.base.detach().as_strided(obj.size, obj.stride, obj.offset)
            return obj

        super().__init__(pack, unpack)


class Learner:
    """One block with its fixed feedback matrix and the stash of its in-flight steps.

    forward(step, x) runs the block and keeps the output's graph; `update` back-propagates each block's
    signal inside the block only, then steps the optimizer. The signal of a hidden block under DFA is
    B_k e (at every position, for a sequence: `positions` leading dims after the batch); of the head, e
    itself (its true gradient). `input_grad`: the head also keeps the graph to its input, for the error
    it broadcasts under feedback.error_at = hidden (`input_gradient`). `rows`: a replica.Rows, the block
    seeing one replica's share of each minibatch."""

    def __init__(self, block: nn.Module, index: int, *, rule: str, is_head: bool, B: torch.Tensor | None,
                 out_shape: tuple[int, ...], seed: int, keep_units: torch.Tensor | None = None,
                 error_scale: str = "mean", keep_elements: dict[str, torch.Tensor] | None = None,
                 positions: int = 0, input_grad: bool = False, stash_weights: bool = False,
                 act_dtype: torch.dtype = torch.float32, rows=None):
        self.block, self.index, self.rule, self.is_head = block, index, rule, is_head
        # The paper's code: hidden blocks get the per-sample e, the head the gradient of the mean loss.
        self.head_mean = is_head and error_scale == "paper"
        self.rows = rows
        self.parts = rows.parts if rows is not None else 1
        self.B, self.out_shape, self.seed, self.positions = B, out_shape, seed, positions
        self.input_grad, self.inputs = input_grad, {}
        # train.dtype = bfloat16: the block computes under autocast and passes on bfloat16 (the head: float32)
        self.low = act_dtype != torch.float32
        self.out_dtype = torch.float32 if is_head else act_dtype
        self.keep_units, self.keep_elements = keep_units, keep_elements
        self.random = any(isinstance(m, nn.modules.dropout._DropoutNd) for m in block.modules())
        self.hooks = stash_hooks(block, stash_weights)
        self.stash: dict[int, torch.Tensor] = {}
        self.updates = 0  # own updates applied so far (for staleness)
        self.updates_at_forward: dict[int, int] = {}
        self.stash_bytes: dict[int, int] = {}  # per in-flight step: bytes saved for its update

    @property
    def learns(self) -> bool:
        return self.is_head or self.rule != "shallow"

    def forward(self, step: int, x: torch.Tensor) -> torch.Tensor:
        if self.random:
            # Dropout masks depend on (seed, block, step) only, not on the process that draws them.
            # (torch.manual_seed also walks every device and costs milliseconds: seed what is used.)
            s = seeding.derive(self.seed, "dropout", self.index, step)
            if x.is_cuda:
                torch.cuda.manual_seed(s)
            else:
                torch.default_generator.manual_seed(s)
        if not self.learns:
            with torch.no_grad():
                return self._sliced(x)
        if self.rule != "bp":
            x = x.detach().requires_grad_(self.input_grad)
            if self.input_grad:
                self.inputs[step] = x
        before = self.hooks.saved_bytes
        with self.hooks:
            out = self._sliced(x)
        self.stash_bytes[step] = self.hooks.saved_bytes - before
        self.stash[step] = out
        self.updates_at_forward[step] = self.updates
        return out if self.rule == "bp" else out.detach()

    def _sliced(self, x: torch.Tensor) -> torch.Tensor:
        if self.rows is None:
            return self.apply(x)
        with self.rows:
            return self.apply(x)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The block on x in the run's dtype (train.dtype): as is, or under autocast with its output
        rounded to what it passes on."""
        if not self.low:
            return self.block(x)
        with torch.autocast(x.device.type, torch.bfloat16):
            return self.block(x).to(self.out_dtype)

    def signal(self, e: torch.Tensor) -> torch.Tensor | None:
        if self.is_head:
            return e / (e.numel() // e.shape[-1] * self.parts) if self.head_mean else e
        if self.rule == "dfa":
            return feedback.project(self.B, e, self.out_shape, self.positions)
        return None  # bp: gradients arrive through the graph; shallow: nothing to learn

    def input_gradient(self, step: int, e: torch.Tensor) -> torch.Tensor:
        """e taken back through the block at step's forward to its input: the error the head broadcasts
        under feedback.error_at = hidden (the block's weights as they were at that forward)."""
        (g,) = torch.autograd.grad(self.stash[step], self.inputs.pop(step), e, retain_graph=True)
        return g.float()  # e stays float32 whatever the block's input was (train.dtype)

    def take(self, step: int, e: torch.Tensor | None):
        """Step's stashed output, its signal (None: nothing to back-propagate from here) and staleness
        (own updates applied since its forward); counts the update."""
        out = self.stash.pop(step)
        self.stash_bytes.pop(step, None)
        staleness = self.updates - self.updates_at_forward.pop(step)
        self.updates += 1
        return out, (self.signal(e) if e is not None else None), staleness

    def drop(self, step: int) -> None:
        """Forget step's stash without updating (a skipped step: its error was not finite)."""
        self.stash.pop(step, None)
        self.inputs.pop(step, None)
        self.stash_bytes.pop(step, None)
        self.updates_at_forward.pop(step, None)

    # Bottleneck: only the kept entries of this block's parameters are trained (mask form: the rows of
    # the kept units; elements form: a fixed random set of entries). The optimizer steps every entry,
    # then the others are put back, so momentum or Adam never moves them either.
    def _masks(self):
        if self.keep_elements is not None:
            return [(p, self.keep_elements[name]) for name, p in self.block.named_parameters()
                    if name in self.keep_elements]
        n = len(self.keep_units)
        return [(p, self.keep_units) for p in self.block.parameters() if p.dim() >= 1 and p.shape[0] == n]

    def frozen_rows(self):
        if self.keep_units is None and self.keep_elements is None:
            return None
        return [(p, ~keep, p.detach()[~keep].clone()) for p, keep in self._masks()]

    def restore_rows(self, frozen):
        if frozen:
            with torch.no_grad():
                for p, drop, old in frozen:
                    p[drop] = old

    def state(self) -> dict:
        return {"block": self.block.state_dict(), "updates": self.updates}

    def load_state(self, state: dict) -> None:
        self.block.load_state_dict(state["block"])
        self.updates = int(state["updates"])
        self.stash.clear()
        self.inputs.clear()
        self.stash_bytes.clear()
        self.updates_at_forward.clear()


def update(learners: list[Learner], opt: torch.optim.Optimizer | None, step: int, e: torch.Tensor | None,
           lr: float, head_e: torch.Tensor | None = None, before_step=None, reduce=None) -> list[int]:
    """Step's update of `learners`, which share `opt`: every block's signal back-propagated inside the
    block in one autograd call, then `reduce(params)` (replicas: every `.grad` replaced by its sum over the
    stage's replicas), then `before_step()` (what the optimizer settings add: clipping, decoupled
    decay), then one optimizer step. `head_e`: the head's own error where it differs from the
    broadcast e (feedback.error_at = hidden). Returns each learning block's staleness."""
    taken = [learner.take(step, head_e if learner.is_head and head_e is not None else e)
             for learner in learners if learner.learns]
    roots = [(out, g.to(out.dtype)) for out, g, _ in taken if g is not None]
    if roots:
        # A head that broadcast dL/d(its input) has computed it already (input_gradient): only weights here.
        only = {"inputs": [p for learner in learners if learner.learns for p in learner.block.parameters()
                           if p.requires_grad]} if any(learner.input_grad for learner in learners) else {}
        torch.autograd.backward([out for out, _ in roots], [g for _, g in roots], **only)
    if opt is not None:
        for group in opt.param_groups:
            group["lr"] = lr
        if reduce is not None:
            reduce([p for group in opt.param_groups for p in group["params"]])
        frozen = [learner.frozen_rows() for learner in learners]
        if before_step is not None:
            before_step()
        opt.step()
        for group in opt.param_groups:  # (zero_grad, without its per-call overhead)
            for p in group["params"]:
                p.grad = None
        for learner, rows in zip(learners, frozen):
            learner.restore_rows(rows)
    return [s for _, _, s in taken]


def bottleneck_units(width: int, b: int, seed: int) -> torch.Tensor:
    """A fixed random boolean mask with exactly b of `width` units kept."""
    perm = torch.randperm(width, generator=seeding.generator(seed, "bottleneck"))
    keep = torch.zeros(width, dtype=torch.bool)
    keep[perm[:b]] = True
    return keep


def bottleneck_elements(block: nn.Module, b: int, width: int, seed: int) -> dict[str, torch.Tensor]:
    """The paper's code: a fixed random mask over every entry of the block's linear layer (weight and
    bias), each kept with probability b / width."""
    layer = first_layer(block)
    names = {id(p): n for n, p in block.named_parameters()}
    g = seeding.generator(seed, "bottleneck")
    return {names[id(p)]: torch.rand(p.shape, generator=g) < b / width for p in layer.parameters()}


def per_sample_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1, eps=1e-30)


def cosine_stats(signal: torch.Tensor, true: torch.Tensor, prefix: str = "", positions: int = 0) -> dict:
    """The paper's measure over the probe batch (`cos_mean`, `cos_std`: every sample counts, one whose true
    gradient is exactly 0 with cosine 0), the share of such samples (`zero_share`: a saturated softmax
    gives e = 0 in float32) and the mean over the others (`cos_live_mean`; NaN when there are none).
    With `positions` (a sequence), every position of every sample counts as one."""
    signal, true = signal.flatten(0, positions), true.flatten(0, positions)
    cos = per_sample_cosine(signal, true)
    live = true.flatten(1).abs().amax(1) > 0
    return {f"{prefix}cos_mean": cos.mean().item(), f"{prefix}cos_std": cos.std().item(),
            f"{prefix}zero_share": 1.0 - live.double().mean().item(),
            f"{prefix}cos_live_mean": cos[live].mean().item() if bool(live.any()) else float("nan")}


def update_angle(ga: list[torch.Tensor], gb: list[torch.Tensor]) -> float:
    """Angle in degrees between two parameter updates (lists of per-parameter gradients)."""
    a = torch.cat([g.flatten() for g in ga]).double()
    b = torch.cat([g.flatten() for g in gb]).double()
    cos = (a @ b / (a.norm() * b.norm()).clamp_min(1e-300)).clamp(-1, 1)
    return math.degrees(math.acos(cos.item()))


def first_layer(block: nn.Module) -> nn.Module | None:
    """The block's first linear or conv layer: its output is the block's pre-activation."""
    return next((m for m in block.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
