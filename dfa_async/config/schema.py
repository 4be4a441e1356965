"""The settings' schema: one dataclass per TOML section, each field with its default, docstring and
allowed values, and the checks of single values (`check_value`) and of settings together (`validate`).
Every bad setting raises ``ConfigError`` with one line that names the key and what is allowed."""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A setting is malformed; the message is one line naming the key and what is allowed."""


INT_MAX = 2**31 - 1  # the bound of every integer setting that has no bound of its own


def _opt(default, doc, choices=None, lo=None, hi=None, lo_open=False, hi_open=False):
    is_int = isinstance(default, int) and not isinstance(default, bool) or isinstance(default, list)
    if hi is None and is_int:
        hi = INT_MAX
    meta = {"doc": doc, "choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


ACTIVATIONS = ("tanh", "relu", "leaky_relu", "sigmoid")
TEXT = ("tinyshakespeare", "text")  # the datasets that are token streams


@dataclass
class ModelConfig:
    kind: str = _opt("mlp", "Network family: fully connected `mlp`, the paper's `cnn`, or `gpt` (a decoder-only "
                     "transformer over token ids: a block per transformer layer, the embeddings in the first, the "
                     "final LayerNorm and decoder the head).", ("mlp", "cnn", "gpt"))
    widths: list[int] = _opt([800, 800], "Hidden widths of the fully connected blocks (for `cnn`: the FC "
                             "blocks after the convolutions; the paper uses [128]).", lo=1)
    channels: list[int] = _opt([32, 64, 64], "Output channels of the conv blocks (5x5, padding 2, "
                               "max-pool 3/2), `cnn` only.", lo=1)
    activation: str = _opt("tanh", "Activation of every hidden block.", ACTIVATIONS)
    leaky_slope: float = _opt(0.01, "Negative slope of `leaky_relu`.", lo=0.0)
    batchnorm: bool = _opt(False, "Batch normalization after each hidden linear/conv layer.")
    dropout_input: float = _opt(0.0, "Dropout rate on the network input.", lo=0.0, hi=1.0, hi_open=True)
    dropout_hidden: float = _opt(0.0, "Dropout rate at the output of every hidden block.", lo=0.0, hi=1.0,
                                 hi_open=True)
    block_order: str = _opt("standard", "Layers inside a hidden block. `standard`: Linear -> BatchNorm -> "
                            "activation -> Dropout (conv: Conv -> activation -> BatchNorm -> MaxPool -> Dropout). "
                            "`paper`: the paper's code, Linear -> Dropout -> activation -> BatchNorm (conv: Conv -> "
                            "Dropout2d -> activation -> BatchNorm -> MaxPool). B_k e always enters at the block's "
                            "output, the input of the next linear/conv layer.", ("standard", "paper"))
    n_layer: int = _opt(4, "`gpt`: transformer layers (pre-LayerNorm: causal self-attention, then a GELU MLP).",
                        lo=1)
    n_head: int = _opt(4, "`gpt`: attention heads per layer (they must divide n_embd).", lo=1)
    n_embd: int = _opt(128, "`gpt`: width of the residual stream.", lo=1)
    block_size: int = _opt(64, "`gpt`: context length in tokens (each training window holds block_size + 1).", lo=1)
    dropout: float = _opt(0.0, "`gpt`: dropout on the embeddings, the attention weights and each residual branch.",
                          lo=0.0, hi=1.0, hi_open=True)
    bias: bool = _opt(False, "`gpt`: biases in the linear layers and LayerNorms.")


@dataclass
class FeedbackConfig:
    rule: str = _opt("dfa", "Learning rule: `dfa` (direct feedback alignment), `bp` (backprop) or "
                     "`shallow` (only the head learns).", ("dfa", "bp", "shallow"))
    init: str = _opt("gaussian", "Distribution of the fixed feedback matrices B_k. Two need e as wide as the block "
                     "(feedback.error_at = hidden in a residual network such as `gpt`): `wishart`, a random "
                     "symmetric positive definite A A^T / m (A gaussian, m = 2 x width), so that every block's "
                     "signal e B stays within a fixed angle of e, the error the skip path carries; and `identity`, not "
                     "random, the error at the network's output unrotated, as the skip path carries it.",
                     ("gaussian", "uniform", "orthogonal", "sign", "identity", "wishart"))
    normalization: str = _opt("paper", "`paper`: one classes x d_max matrix of variance 1/(d_max*classes), "
                              "block k takes its first d_k columns times sqrt(d_max/d_k); `independent`: a "
                              "draw per block of variance 1/(d_k*classes); `none`: the paper's unnormalized "
                              "feedback, one classes x d_max matrix of unit variance, block k its first d_k "
                              "columns; `none-independent`: a unit-variance draw per block.",
                              ("paper", "independent", "none", "none-independent"))
    error_scale: str = _opt("mean", "What e is. `mean`: dL/dy of the batch-mean loss, for every block "
                            "(PyTorch's convention: learning rates carry over from backprop). `sum`: of the summed "
                            "loss, per-sample softmax - onehot, for every block (all updates batch_size times "
                            "`mean`'s). `paper`: the paper's code, per-sample e through B_k for hidden blocks, "
                            "the batch-mean gradient for the head.", ("mean", "sum", "paper"))
    error_at: str = _opt("logits", "Where e is taken and broadcast. `logits`: softmax - onehot (per sample, or per "
                         "token for a sequence model; its size is the vocabulary's). `hidden`: the head "
                         "back-propagates that through its own layers and broadcasts the gradient at its input "
                         "(for `gpt`: the transformer's output, n_embd per token, whatever the vocabulary).",
                         ("logits", "hidden"))


@dataclass
class BottleneckConfig:
    block: int = _opt(-1, "Hidden block to restrict, numbered from 0 as in the event log; -1 turns the bottleneck "
                      "off.", lo=-1)
    width: int = _opt(0, "Effective width b of that block.", lo=0)
    form: str = _opt("mask", "`mask`: only a fixed random b of the block's units receive weight updates; "
                     "`elements`: the paper's code, a fixed random mask over the entries of the block's "
                     "linear layer keeps each with probability b/width; `narrow`: the block really has "
                     "width b.", ("mask", "elements", "narrow"))


@dataclass
class DataConfig:
    name: str = _opt("mnist", "Dataset. `tinyshakespeare` (characters; the first 90 % train, the last 10 % "
                     "validation) and `text` (any UTF-8 file at data.path, split alike) are token streams for "
                     "`gpt`.", ("mnist", "fashion_mnist", "cifar10", "synthetic", "tinyshakespeare", "text"))
    path: str = _opt("", "`text`: the UTF-8 file to train on.")
    eval_windows: int = _opt(2400, "Token streams: validation windows of model.block_size tokens, at fixed seeded "
                             "offsets in the validation split.", lo=1)
    dir: str = _opt("", "Data directory; empty means $DFA_ASYNC_DATA, else ~/.cache/dfa_async.")
    download: bool = _opt(True, "Download missing files (md5-verified) when they are absent.")
    url: str = _opt("", "Base URL to download from instead of the publisher's (a mirror).")
    normalize: bool = _opt(True, "Standardize inputs with the dataset's per-channel mean and std.")
    augment: str = _opt("none", "Training-batch augmentation: `flip` mirrors each image left to right with "
                        "probability 1/2, drawn from (train.seed, step) alone, so that every trainer and every "
                        "first stage sees the same batches (meant for CIFAR-10; digits are not symmetric).",
                        ("none", "flip"))
    on_device: bool = _opt(True, "On a GPU, hold the training inputs (first stage) and labels (head) in device "
                           "memory and gather each minibatch there, rather than gathering it on the host and "
                           "copying it over at every step. Off for a training set larger than the GPU's free "
                           "memory. No effect on CPUs.")
    limit_train: int = _opt(0, "Use only the first N training samples; 0 uses all.", lo=0)
    limit_test: int = _opt(0, "Use only the first N test samples; 0 uses all.", lo=0)
    n_train: int = _opt(2048, "Synthetic only: number of training samples (for a gpt: tokens of its random "
                        "stream).", lo=1)
    n_test: int = _opt(512, "Synthetic only: number of test samples (for a gpt: windows).", lo=1)
    shape: list[int] = _opt([1, 8, 8], "Synthetic only: sample shape [channels, height, width].", lo=1)
    classes: int = _opt(10, "Synthetic only: number of classes (for a gpt: the vocabulary).", lo=2)


@dataclass
class OptimConfig:
    name: str = _opt("adam", "Optimizer of every block. `adamw`: Adam with weight decay decoupled from the "
                     "gradient (applied to matrices only: no biases, gains or norms).", ("sgd", "adam", "adamw"))
    beta1: float = _opt(0.9, "Adam's first-moment decay.", lo=0.0, hi=1.0, hi_open=True)
    beta2: float = _opt(0.999, "Adam's second-moment decay.", lo=0.0, hi=1.0, hi_open=True)
    clip_norm: float = _opt(0.0, "Each block's update (its gradient) rescaled to at most this L2 norm before the "
                            "step; a block's own norm, never one across stages (that would need a sync); 0: off.",
                            lo=0.0)
    lr: float = _opt(0.001, "Learning rate.", lo=0.0, lo_open=True)
    momentum: float = _opt(0.9, "SGD momentum.", lo=0.0, hi=1.0, hi_open=True)
    nesterov: bool = _opt(False, "SGD Nesterov momentum.")
    weight_decay: float = _opt(0.0, "Weight decay: L2 in the gradient (sgd, adam); decoupled (adamw).", lo=0.0)
    fused: bool = _opt(True, "PyTorch's fused optimizer kernels (one pass over each tensor; on a CPU core 1.3x "
                       "(SGD) to 5x (Adam) faster than the per-tensor loop). Off: the per-tensor loop.")
    schedule: str = _opt("constant", "Learning-rate schedule over the run's steps. `cosine`: from lr down to "
                         "lr_min; `warmup_cosine`: linear warmup over warmup_steps, then that cosine.",
                         ("constant", "cosine", "warmup_cosine", "step"))
    warmup_steps: int = _opt(0, "`warmup_cosine`: steps of linear warmup.", lo=0)
    lr_min: float = _opt(0.0, "`cosine`, `warmup_cosine`: the rate at the last step.", lo=0.0)
    step_every: int = _opt(0, "`step` schedule: multiply the rate by gamma every this many epochs.", lo=0)
    gamma: float = _opt(0.1, "`step` schedule factor.", lo=0.0, hi=1.0, lo_open=True)


@dataclass
class TrainConfig:
    epochs: int = _opt(3, "Epochs over the training set (the run stops at whichever of epochs and "
                       "max_steps comes first).", lo=0)
    max_steps: int = _opt(0, "Stop after this many steps; 0 means no limit.", lo=0)
    batch_size: int = _opt(128, "Minibatch size (the last partial batch of an epoch is dropped).", lo=2)
    eval_batch_size: int = _opt(1000, "Batch size of evaluation.", lo=1)
    dtype: str = _opt("float32", "What the blocks compute in and pass on. `bfloat16`: every block's forward runs "
                      "under autocast and its output is rounded to bfloat16 (what the links carry: half the bytes), "
                      "at every block, so placement still never changes what is learned; weights, optimizer state, "
                      "the error e and the head's logits stay float32.", ("float32", "bfloat16"))
    eval_every: int = _opt(0, "Evaluate every this many steps as well as at each epoch's end (the pipeline drains "
                           "there, so it is part of the schedule); 0: at epoch ends only.", lo=0)
    seed: int = _opt(0, "Seed of initialization, feedback matrices, shuffling and dropout.", lo=0)
    name: str = _opt("", "Run name (directory under `root`): letters, digits, `.`, `_` and `-`, not starting with "
                     "`.`; empty derives one from the settings and time.")
    root: str = _opt("runs", "Directory that holds run directories: a path (shared by every node on a cluster) "
                     "or an fsspec URI such as s3://bucket/runs, staged locally and pushed at every checkpoint.")
    log_every: int = _opt(10, "Write a `train` record every this many steps.", lo=1)
    on_nonfinite: str = _opt("stop", "A step whose loss or error is not finite: `stop` the run (at the end of "
                             "its window, naming the last good checkpoint), or `skip` that step's update on every "
                             "stage and go on (each skip is logged as a `skip` record).", ("stop", "skip"))


@dataclass
class RuntimeConfig:
    backend: str = _opt("ray", "`ray`: one actor per stage; `local`: the single-process reference.",
                        ("local", "ray"))
    depth: int = _opt(1, "In-flight depth D of the pipeline schedule; 1 is synchronous DFA.", lo=1)
    weight_stashing: bool = _opt(False, "With D > 1, a block's update of step t back-propagates inside the block "
                                 "through the weights its forward of step t used (PipeDream's weight stashing: a "
                                 "copy of the weights per step in flight) instead of its current ones. Matters for "
                                 "blocks of several layers in a row (a transformer layer); a single linear layer's "
                                 "update never reads its own weights.")
    weight_prediction: bool = _opt(False, "With D > 1, a stage's forward of step t uses its weights as the updates "
                                   "still in flight (steps t - D + 1 .. t - 1) will leave them, predicted from the "
                                   "optimizer's state (Adam: lr m^/(sqrt(v^) + eps) plus the decoupled decay; SGD: "
                                   "lr times the momentum buffer) once per step in flight at that step's rate "
                                   "(SpecTrain's weight prediction). Step t's update back-propagates through those "
                                   "weights (they are stashed, as with runtime.weight_stashing) and applies to the "
                                   "real ones. Needs adam, adamw or sgd with momentum. Costs seven passes over the "
                                   "stage's weights per forward (docs/rules.md).")
    blocks_per_stage: list[int] = _opt([], "Blocks per stage, in order (e.g. [2, 1]); empty puts one block per stage; "
                             "\"auto\" measures every block's forward + update and splits the blocks into "
                             "runtime.num_stages contiguous stages so that the slowest is as fast as it can be.",
                             lo=1, choices=("auto",))
    num_stages: int = _opt(0, "With runtime.blocks_per_stage = \"auto\": how many stages; 0 means one per CPU core of "
                           "this machine (at most one per block).", lo=0)
    replicas: int = _opt(1, "Copies R of the whole pipeline (layer x data parallel): replica r of every stage takes rows "
                         "r*B/R .. (r+1)*B/R of each minibatch and only talks to replica r of the other stages; the "
                         "replicas of a stage sum their gradients before every step, so they stay identical and learn "
                         "what one pipeline learns on the whole minibatch. R must divide train.batch_size; \"auto\": "
                         "as many as the cluster's GPUs (else CPUs) allow for the stages.", lo=1, choices=("auto",))
    sync_batchnorm: bool = _opt(False, "With runtime.replicas > 1: batchnorm normalizes by the whole minibatch's "
                                "statistics, summed over the replicas (forward and backward), as one pipeline does. "
                                "Off: each replica by its own rows (DDP's default); the running statistics kept, "
                                "evaluated and saved are then replica 0's.")
    address: str = _opt("", "Ray address to join (e.g. `auto`); empty starts a local instance for the run.")
    threads: int = _opt(1, "Torch threads per stage actor (and of the local backend).", lo=1)
    num_cpus: int = _opt(0, "CPUs of the local Ray instance; 0 means max(stages, cores).", lo=0)
    placement: str = _opt("pack", "Placement-group strategy for the stage actors: `pack` (as few nodes as "
                          "possible), `spread` (across nodes, best effort), `strict_spread` (one stage per node; "
                          "waits for, or is refused, a cluster with fewer nodes than stages).",
                          ("pack", "spread", "strict_spread"))
    transport: str = _opt("auto", "Data plane between the stages: `shm` (stages on one node: shared-memory "
                          "rings, host memory), `gloo` (torch.distributed over TCP, host memory; across nodes), "
                          "`nccl` (torch.distributed, CUDA tensors, one GPU per stage), or `auto` (nccl when every "
                          "stage has a GPU, else shm on one x86-64 Linux node, else gloo).",
                          ("auto", "shm", "gloo", "nccl"))
    window: int = _opt(0, "Most steps a stage runs per call from the driver; 0: about one second of work, "
                       "as measured. A window never changes what is learned; between windows the driver logs, "
                       "updates the progress bar and checks every step's loss. Windows also end at every "
                       "evaluation, checkpoint and alignment probe.", lo=0)
    peer_timeout_s: float = _opt(120.0, "Seconds a stage waits for a tensor from its peers before it reports "
                                 "them lost (a peer whose process dies is noticed at once; this catches a node "
                                 "that vanished without closing its connections).", lo=1.0)
    device: str = _opt("auto", "`auto` uses GPUs where the cluster has runtime.gpus_per_stage of a GPU for every "
                       "stage, else the CPU; `cuda` requires them.", ("auto", "cpu", "cuda"))
    gpus_per_stage: float = _opt(1.0, "Share of a GPU each stage actor asks Ray for: 1 is a GPU per stage; "
                                 "0.5 or 0.25 put 2 or 4 stages on one GPU (they then exchange tensors through host "
                                 "memory, since nccl needs a GPU per rank).", lo=0.0, hi=1.0, lo_open=True)
    autoscale: bool = _opt(False, "The joined cluster adds nodes on demand (Ray's autoscaler): stages beyond its "
                           "present total resources wait up to runtime.placement_timeout_s for new nodes instead of "
                           "failing at once.")
    placement_timeout_s: float = _opt(300.0, "Seconds to wait for the stages to be placed on a joined cluster (other "
                                      "jobs may hold its resources) before a clear error.", lo=1.0)
    max_failures: int = _opt(3, "Stage failures survived (restart from the last checkpoint) before "
                             "the run stops.", lo=0)


@dataclass
class AlignmentConfig:
    every: int = _opt(0, "Measure alignment every this many steps (and at the end); 0 turns it off.", lo=0)
    probe_size: int = _opt(256, "Samples in the fixed probe batch (the first of `alignment.data`).", lo=2)
    data: str = _opt("train", "Where the probe batch comes from: `train` or held-out `test` samples (the "
                     "paper: a validation batch).", ("train", "test"))
    mode: str = _opt("train", "The blocks' mode during the probe: `train` (dropout on, batchnorm batch "
                     "statistics) or `eval` (as the paper measures).", ("train", "eval"))


@dataclass
class CheckpointConfig:
    every: int = _opt(0, "Checkpoint every this many steps (at a drained boundary); 0: only at the end.",
                      lo=0)
    keep: int = _opt(2, "Checkpoints kept (the newest ones).", lo=1)


@dataclass
class MetricsConfig:
    enabled: bool = _opt(False, "Serve Prometheus metrics (also on whenever port > 0); the address in use is "
                         "printed and written to the event log (a `metrics` record).")
    port: int = _opt(0, "Port of the exporter; 0 picks any free port when metrics.enabled.", lo=0, hi=65535)
    host: str = _opt("127.0.0.1", "Address the exporter binds (0.0.0.0 to be scraped from other machines).")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    bottleneck: BottleneckConfig = field(default_factory=BottleneckConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hidden_widths(self) -> list[int]:
        """Widths of the fully connected hidden blocks after the narrow bottleneck is applied."""
        widths = list(self.model.widths)
        b = self.bottleneck
        if b.block >= 0 and b.form == "narrow":
            widths[b.block - self.num_conv_blocks()] = b.width
        return widths

    def num_conv_blocks(self) -> int:
        return len(self.model.channels) if self.model.kind == "cnn" else 0

    def num_blocks(self) -> int:
        if self.model.kind == "gpt":
            return self.model.n_layer + 1
        return self.num_conv_blocks() + len(self.model.widths) + 1


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def section_class(name):
    return typing.get_type_hints(Config)[name]


def check_value(key: str, f: dataclasses.Field, hint, value):
    """Coerce and check one value against its declared type and range; return the stored value."""
    meta = f.metadata
    origin = typing.get_origin(hint)
    if origin is list:
        if meta["choices"] and value in meta["choices"]:  # a word in place of the list, e.g. "auto"
            return value
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            words = f" or {', '.join(repr(c) for c in meta['choices'])}" if meta["choices"] else ""
            raise ConfigError(f"{key}: expected a list of integers like [800, 800]{words}, got {value!r}")
        for v in value:
            _check_range(key, meta, v)
        return list(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if meta["choices"] and value in meta["choices"]:  # a word in place of the number, e.g. "auto"
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            words = f" or {', '.join(repr(c) for c in meta['choices'])}" if meta["choices"] else ""
            raise ConfigError(f"{key}: expected an integer{words}, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{key}: expected a finite number, got {value}")
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
    if meta["choices"] and hint is not int and value not in meta["choices"]:
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(meta['choices'])}")
    if hint in (int, float):
        _check_range(key, meta, value)
    return value


def _check_range(key, meta, v):
    lo, hi = meta["lo"], meta["hi"]
    if lo is not None and (v < lo or (meta["lo_open"] and v == lo)):
        bound = f"> {lo}" if meta["lo_open"] else f">= {lo}"
        raise ConfigError(f"{key}: {v!r} is out of range; it must be {bound}"
                          + (f" and {'<' if meta['hi_open'] else '<='} {hi}" if hi is not None else ""))
    if hi is not None and (v > hi or (meta["hi_open"] and v == hi)):
        raise ConfigError(f"{key}: {v!r} is out of range; it must be {'<' if meta['hi_open'] else '<='} {hi}")


NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")  # a run name: one directory, no path, no control


def validate(cfg: Config, own_model: bool = False) -> None:
    """Checks that involve more than one setting (`own_model`: the model is a user's nn.Sequential, so
    the checks that depend on model.* are left to stage.Plan)."""
    m, fb, b, rt, tr, d = cfg.model, cfg.feedback, cfg.bottleneck, cfg.runtime, cfg.train, cfg.data
    if tr.name and not NAME.fullmatch(tr.name):
        raise ConfigError(f"train.name: {tr.name!r} is not a plain directory name; use letters, digits, '.', '_' "
                          "and '-' (not starting with '.'), at most 200 characters")
    if d.url and d.url.split("://", 1)[0] not in ("http", "https", "ftp", "file"):
        raise ConfigError(f"data.url: {d.url!r} is not a URL; give http(s)://, ftp:// or file:// (a mirror of the "
                          "publisher's files), or leave it empty")
    if rt.backend == "local":
        # The local backend runs every stage in this process: settings of actors and clusters would be
        # silently ignored, so they are refused.
        for name, default in (("address", ""), ("transport", "auto"), ("gpus_per_stage", 1.0), ("num_cpus", 0),
                              ("placement", "pack"), ("autoscale", False), ("placement_timeout_s", 300.0)):
            if getattr(rt, name) != default:
                raise ConfigError(f"runtime.{name}: {getattr(rt, name)!r} applies to runtime.backend = ray; the "
                                  f"local backend runs in this process (leave it at {default!r})")
    if rt.replicas != 1 and rt.backend == "local":
        raise ConfigError(f"runtime.replicas: {rt.replicas!r} copies of the pipeline need runtime.backend = ray; the "
                          "local backend runs one (leave it at 1)")
    if isinstance(rt.replicas, int) and tr.batch_size % rt.replicas:
        fits = [str(r) for r in range(1, tr.batch_size + 1) if tr.batch_size % r == 0]
        fits = fits if len(fits) <= 8 else fits[:7] + ["..."]
        raise ConfigError(f"runtime.replicas: {rt.replicas} replicas cannot share train.batch_size = {tr.batch_size} "
                          f"rows equally; choose a divisor of {tr.batch_size} ({', '.join(fits)}) or change the "
                          "batch size")
    if rt.replicas != 1 and m.kind == "gpt" and m.dropout > 0 and not own_model:
        raise ConfigError(f"model.dropout: {m.dropout} with runtime.replicas = {rt.replicas}: attention dropout is "
                          "drawn inside scaled_dot_product_attention, where a replica cannot take its rows of the "
                          "whole minibatch's draw; use model.dropout = 0 or runtime.replicas = 1")
    streams = d.name in TEXT
    if m.kind == "gpt" and not streams and d.name != "synthetic" and not own_model:
        raise ConfigError(f"data.name: {d.name!r} is not a token stream; model.kind = gpt reads tinyshakespeare, "
                          "text (with data.path) or synthetic (random tokens)")
    if streams and m.kind != "gpt" and not own_model:
        raise ConfigError(f"model.kind: {m.kind!r} cannot read the token stream of data.name = {d.name!r}; use gpt "
                          "(or your own blocks through the Python API)")
    if d.name == "text" and not d.path:
        raise ConfigError("data.path: data.name = text needs the UTF-8 file to train on; give its path")
    if m.kind == "gpt" and m.n_embd % m.n_head:
        raise ConfigError(f"model.n_head: {m.n_head} heads do not divide model.n_embd = {m.n_embd}; choose a divisor "
                          f"of {m.n_embd}")
    if m.kind == "gpt" and b.block >= 0:
        raise ConfigError("bottleneck.block: the bottleneck restricts a fully connected block; a gpt has none "
                          "(leave it at -1)")
    if cfg.optim.schedule == "warmup_cosine" and cfg.optim.warmup_steps == 0:
        raise ConfigError("optim.warmup_steps: the warmup_cosine schedule needs warmup_steps >= 1 (or use cosine)")
    if m.kind == "mlp" and not m.widths:
        raise ConfigError("model.widths: an mlp needs at least one hidden width, e.g. [800, 800]")
    if m.kind == "cnn" and not m.channels:
        raise ConfigError("model.channels: a cnn needs at least one conv block, e.g. [32, 64, 64]")
    if tr.epochs == 0 and tr.max_steps == 0:
        raise ConfigError("train.epochs: 0 with train.max_steps = 0 would train nothing; set either > 0")
    if rt.weight_prediction and cfg.optim.name == "sgd" and cfg.optim.momentum == 0:
        raise ConfigError("runtime.weight_prediction: plain SGD keeps no state to predict the updates in flight from; "
                          "use optim.momentum > 0 or optim.name = adam or adamw (or leave weight_prediction off)")
    if rt.weight_prediction and b.block >= 0:
        raise ConfigError("runtime.weight_prediction: the predicted weights would move the entries bottleneck.block "
                          "keeps fixed; leave one of them off (bottleneck.block = -1)")
    if fb.rule == "bp" and rt.depth != 1:
        raise ConfigError(f"runtime.depth: {rt.depth} needs a feedback rule without a backward pass; "
                          "feedback.rule = bp allows only depth 1")
    if fb.rule == "bp" and rt.backend == "ray":
        raise ConfigError("feedback.rule: bp is not layer-parallel; with runtime.backend = ray use dfa or "
                          "shallow (or set runtime.backend = local)")
    if b.block >= 0 and not own_model:
        hidden = cfg.num_blocks() - 1
        if b.block >= hidden:
            raise ConfigError(f"bottleneck.block: {b.block} is out of range; the model has hidden blocks "
                              f"0..{hidden - 1}")
        if b.block < cfg.num_conv_blocks():
            raise ConfigError(f"bottleneck.block: {b.block} is a conv block; choose a fully connected block "
                              f"{cfg.num_conv_blocks()}..{hidden - 1}")
        width = m.widths[b.block - cfg.num_conv_blocks()]
        if not 1 <= b.width <= width:
            raise ConfigError(f"bottleneck.width: {b.width} is out of range; it must be 1..{width} "
                              f"(the width of block {b.block})")
    if rt.blocks_per_stage == "auto" and rt.num_stages > cfg.num_blocks() and not own_model:
        raise ConfigError(f"runtime.num_stages: {rt.num_stages} stages for a model of {cfg.num_blocks()} blocks; "
                          f"use 0 to {cfg.num_blocks()}")
    if rt.num_stages and rt.blocks_per_stage != "auto":
        raise ConfigError("runtime.num_stages: only used with runtime.blocks_per_stage = \"auto\"; set that, or give "
                          "runtime.blocks_per_stage as a list and num_stages = 0")
    sizes = rt.blocks_per_stage
    if isinstance(sizes, list) and sizes and not own_model and sum(sizes) != cfg.num_blocks():
        raise ConfigError(f"runtime.blocks_per_stage: {sizes} holds {sum(sizes)} blocks but the model has "
                          f"{cfg.num_blocks()}; make the counts add up to {cfg.num_blocks()}")
    if d.name == "synthetic" and len(d.shape) != 3:
        raise ConfigError(f"data.shape: {d.shape} must be [channels, height, width]")
    if m.kind == "cnn" and d.name == "synthetic":
        side = min(d.shape[1:])
        for _ in m.channels:
            side = (side - 3) // 2 + 1
            if side < 1:
                raise ConfigError(f"data.shape: {d.shape} is too small for {len(m.channels)} conv blocks "
                                  "with max-pool 3/2; use larger images or fewer model.channels")
    if rt.gpus_per_stage < 1 and rt.device == "cpu":
        raise ConfigError(f"runtime.gpus_per_stage: {rt.gpus_per_stage} needs runtime.device = cuda or auto; "
                          "leave it at 1 on CPUs")
    if rt.gpus_per_stage < 1 and rt.transport == "nccl":
        raise ConfigError(f"runtime.transport: nccl needs a GPU per stage; with runtime.gpus_per_stage = "
                          f"{rt.gpus_per_stage} use shm, gloo or auto")
    if rt.transport == "nccl" and rt.device == "cpu":
        raise ConfigError("runtime.transport: nccl moves CUDA tensors; with runtime.device = cpu use "
                          "shm, gloo or auto")
    if cfg.optim.schedule == "step" and cfg.optim.step_every == 0:
        raise ConfigError("optim.step_every: the step schedule needs step_every >= 1 (epochs)")
