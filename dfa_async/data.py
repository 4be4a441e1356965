"""Datasets in the formats their publishers distribute: MNIST and Fashion-MNIST as IDX .gz files,
CIFAR-10 as its binary version (cifar-10-batches-bin), Tiny Shakespeare as char-rnn's input.txt, found
under the data directory or downloaded with md5 (sha256) verification; any UTF-8 text file; and a
synthetic dataset for fast tests.

Images are samples; a text is a token stream (characters), whose training samples are windows at
seeded random offsets (`TextBatches`) and whose validation set is a fixed seeded set of windows."""
from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import seeding
from .config import DataConfig
from .config.schema import TEXT


class DataError(RuntimeError):
    """A dataset is missing or corrupt; the message says which file and how to get it."""


@dataclass
class Dataset:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: int
    window: int = 0  # > 0: x_train and y_train are one token stream, sampled in windows of this length
    vocab: str = ""  # a token stream's characters, by token id

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.window,) if self.window else tuple(self.x_train.shape[1:])

    @property
    def samples(self) -> int:
        """Training samples in an epoch: a token stream counts its windows end to end."""
        return (len(self.x_train) - 1) // self.window if self.window else len(self.x_train)


IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
MD5 = {
    "mnist": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
              "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
    "fashion_mnist": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                      "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
}
URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
    "tinyshakespeare": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/",
}
SHAKESPEARE_FILE = "input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TRAIN_SHARE = 0.9  # of a text's characters, the first ones; the rest validate (nanoGPT's shakespeare_char)
CIFAR_ARCHIVE, CIFAR_MD5 = "cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
# Per-channel mean and std of the training sets.
STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


def data_dir(cfg: DataConfig) -> Path:
    return Path(cfg.dir or os.environ.get("DFA_ASYNC_DATA") or Path.home() / ".cache" / "dfa_async").expanduser()


def md5(path: Path, algorithm: str = "md5") -> str:
    """The file's md5 (or another hashlib algorithm's) hex digest."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _algorithm(expected: str) -> str:
    return "sha256" if len(expected) == 64 else "md5"


def download(url: str, dest: Path, expected_md5: str) -> None:
    """Fetch `url` into `dest` atomically (temporary file, md5 or sha256 check, rename)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    except OSError as err:
        raise DataError(f"data.dir: cannot write {dest.parent} ({err.strerror}); set data.dir to a folder you can "
                        "write to, or put the file there yourself") from None
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        algorithm = _algorithm(expected_md5)
        got = md5(Path(tmp), algorithm)
        if got != expected_md5:
            raise DataError(f"data: download of {url} has {algorithm} {got}, expected {expected_md5}; "
                            "the server sent a different file (check data.url)")
        os.replace(tmp, dest)
    except (OSError, ValueError) as err:  # ValueError: not a URL urllib can open
        raise DataError(f"data: could not download {url} to {dest} ({err}); put the file there yourself "
                        "or set data.dir / DFA_ASYNC_DATA to a folder that holds it") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _base_url(cfg: DataConfig, name: str) -> str:
    return f"{cfg.url.rstrip('/')}/{name}/" if cfg.url else URLS[name]


def _ensure(cfg: DataConfig, name: str, filename: str, expected_md5: str) -> Path:
    base = data_dir(cfg)
    if base.exists() and not base.is_dir():
        raise DataError(f"data.dir: {base} is a file, not a folder; set data.dir (or DFA_ASYNC_DATA) to a folder")
    path = base / name / filename
    if path.exists() and not path.is_file():
        raise DataError(f"data: {path} is a {'directory' if path.is_dir() else 'special file'}, where the dataset's "
                        f"file belongs; remove it to download {_base_url(cfg, name)}{filename} there")
    if path.exists():
        try:
            got = md5(path, _algorithm(expected_md5))
        except OSError as err:
            raise DataError(f"data: cannot read {path} ({err.strerror}); make it readable, or set data.dir to a "
                            "folder whose files you can read") from None
        if got != expected_md5:
            raise DataError(f"data: {path} is corrupt ({_algorithm(expected_md5)} {got}, expected {expected_md5}); delete it to "
                            f"download it again from {_base_url(cfg, name)}{filename}")
        return path
    if not cfg.download:
        raise DataError(f"data: {path} is missing; download {_base_url(cfg, name)}{filename} there, or "
                        "set data.download = true")
    download(_base_url(cfg, name) + filename, path, expected_md5)
    return path


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip-compressed) as a numpy array."""
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise DataError(f"data: {path} is not a readable gzip file ({err}); delete it and download it again")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"data: {path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(int)
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"data: {path} holds {body.size} bytes of data, expected {int(np.prod(dims))}")
    return body.reshape(dims)


def load_idx_dataset(cfg: DataConfig, name: str):
    paths = [_ensure(cfg, name, f, m) for f, m in zip(IDX_FILES, MD5[name])]
    xtr, ytr, xte, yte = (read_idx(p) for p in paths)
    return xtr[:, None], ytr, xte[:, None], yte


def _read_cifar_bin(path: Path):
    raw = np.fromfile(path, np.uint8)
    if raw.size == 0 or raw.size % 3073:
        raise DataError(f"data: {path} is corrupt ({raw.size} bytes is not a whole number of 3073-byte "
                        "records); delete the folder to download it again")
    rec = raw.reshape(-1, 3073)
    if rec[:, 0].max() > 9:
        raise DataError(f"data: {path} is corrupt (labels above 9)")
    return rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0]


def load_cifar10(cfg: DataConfig):
    folder = data_dir(cfg) / "cifar10" / "cifar-10-batches-bin"
    missing = [f for f in CIFAR_FILES if not (folder / f).exists()]
    if missing:
        if not cfg.download:
            raise DataError(f"data: {folder}/{missing[0]} is missing; unpack {URLS['cifar10']}{CIFAR_ARCHIVE} "
                            f"into {folder.parent}, or set data.download = true")
        archive = folder.parent / CIFAR_ARCHIVE
        if not archive.exists() or md5(archive) != CIFAR_MD5:
            download(_base_url(cfg, "cifar10") + CIFAR_ARCHIVE, archive, CIFAR_MD5)
        with tarfile.open(archive) as tar:
            tar.extractall(folder.parent, filter="data")
    parts = [_read_cifar_bin(folder / f) for f in CIFAR_FILES]
    xtr = np.concatenate([p[0] for p in parts[:5]])
    ytr = np.concatenate([p[1] for p in parts[:5]])
    return xtr, ytr, parts[5][0], parts[5][1]


def synthetic(cfg: DataConfig, seed: int):
    """Gaussian inputs labelled by a random linear teacher: learnable, and made in milliseconds."""
    g = seeding.generator(seed, "synthetic")
    dim = int(np.prod(cfg.shape))
    teacher = torch.randn(dim, cfg.classes, generator=g)
    x = torch.randn(cfg.n_train + cfg.n_test, *cfg.shape, generator=g)
    y = (x.flatten(1) @ teacher).argmax(1)
    n = cfg.n_train
    return x[:n], y[:n], x[n:], y[n:]


VALIDATION_SEED = 0  # the validation windows: the same for every run, whatever its train.seed


def load_text(cfg: DataConfig, window: int) -> Dataset:
    """A UTF-8 text as a character stream: token ids by sorted distinct character, the first 90 % of the
    characters for training (one stream: a window's labels are its inputs shifted by one) and
    `cfg.eval_windows` fixed windows of the rest for validation."""
    if cfg.name == "tinyshakespeare":
        path = _ensure(cfg, "tinyshakespeare", SHAKESPEARE_FILE, SHAKESPEARE_SHA256)
    else:
        path = Path(cfg.path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"data.path: {path} is not UTF-8 text ({err.reason} at byte {err.start}); give a UTF-8 "
                        "file") from None
    except OSError as err:
        raise DataError(f"data.path: cannot read {path} ({err.strerror}); give a readable UTF-8 file") from None
    vocab = "".join(sorted(set(text)))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.from_numpy(np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text)))
    split = int(len(ids) * TRAIN_SHARE)
    train, val = ids[:split], ids[split:]
    if len(val) < window + 1 or len(vocab) < 2:
        raise DataError(f"data: {path} holds {len(text)} characters ({len(vocab)} distinct); its last 10 % must "
                        f"hold a window of model.block_size + 1 = {window + 1} and it needs 2 distinct characters: "
                        "give a longer text or a smaller model.block_size")
    rng = np.random.default_rng(seeding.derive(VALIDATION_SEED, "validation"))
    span = torch.arange(window)
    at = torch.from_numpy(rng.integers(0, len(val) - window, size=cfg.eval_windows))[:, None] + span
    return Dataset(train, train, val[at], val[at + 1], len(vocab), window=window, vocab=vocab)


def for_run(cfg) -> Dataset:
    """The dataset of a run's settings (`cfg`: its Config): a text (or, for a gpt, synthetic tokens) in
    windows of model.block_size."""
    streams = cfg.data.name in TEXT or cfg.model.kind == "gpt"
    return load(cfg.data, cfg.train.seed, cfg.model.block_size if streams else 0)


def load(cfg: DataConfig, seed: int = 0, window: int = 0) -> Dataset:
    """The dataset of `cfg`, as float32 tensors (N, C, H, W) and int64 labels; a text (data.name
    tinyshakespeare or text) as int64 token streams sampled in windows of `window` tokens."""
    if cfg.name in TEXT:
        return load_text(cfg, window)
    if cfg.name == "synthetic" and window:  # random tokens: the bench's and the tests' stream
        g = seeding.generator(seed, "synthetic")
        stream = torch.randint(0, cfg.classes, (max(cfg.n_train, window + 2),), generator=g)
        held = torch.randint(0, cfg.classes, (cfg.n_test, window + 1), generator=g)
        return Dataset(stream, stream, held[:, :-1], held[:, 1:], cfg.classes, window=window,
                       vocab="".join(chr(65 + i % 58) for i in range(cfg.classes)))
    if cfg.name == "synthetic":
        xtr, ytr, xte, yte = synthetic(cfg, seed)
        classes = cfg.classes
    else:
        arrays = load_cifar10(cfg) if cfg.name == "cifar10" else load_idx_dataset(cfg, cfg.name)
        mean, std = STATS[cfg.name]
        xtr, ytr, xte, yte = (torch.from_numpy(np.array(a)) for a in arrays)
        xtr, xte = xtr.float() / 255, xte.float() / 255
        if cfg.normalize:
            m = torch.tensor(mean).view(1, -1, 1, 1)
            s = torch.tensor(std).view(1, -1, 1, 1)
            xtr, xte = (xtr - m) / s, (xte - m) / s
        ytr, yte = ytr.long(), yte.long()
        classes = 10
    if cfg.limit_train:
        xtr, ytr = xtr[:cfg.limit_train], ytr[:cfg.limit_train]
    if cfg.limit_test:
        xte, yte = xte[:cfg.limit_test], yte[:cfg.limit_test]
    return Dataset(xtr.contiguous(), ytr, xte.contiguous(), yte, classes)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled sample order of an epoch: a pure function of (seed, epoch)."""
    return np.random.default_rng(seeding.derive(seed, "shuffle", epoch)).permutation(n)


class Batches:
    """The minibatch of every step: step t takes batch t % steps_per_epoch of epoch t // steps_per_epoch,
    in that epoch's seeded order (the last partial batch is dropped). The first stage (inputs) and the
    head (labels) each hold one and pick the same samples without talking to each other. `inputs` is the
    first stage's batch, augmented (data.augment) by a pure function of (seed, step) as well."""

    def __init__(self, n: int, batch_size: int, seed: int, augment: str = "none"):
        self.n, self.batch_size, self.seed, self.augment = n, batch_size, seed, augment
        self.steps_per_epoch = n // batch_size
        self._epoch, self._order = -1, None
        self._labels, self._labels_of, self._labels_epoch = None, None, -1  # see labels

    def indices(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._order = torch.from_numpy(epoch_order(self.n, self.seed, epoch))
            self._epoch = epoch
        return self._order[i * self.batch_size:(i + 1) * self.batch_size]

    def inputs(self, x: torch.Tensor, step: int, part: int = 0, parts: int = 1) -> torch.Tensor:
        """Step's rows of the inputs `x` (samples first, width last), a copy, augmented; with `parts`, only
        chunk `part` of the minibatch (a data-parallel worker's share, as `tensor_split` cuts it)."""
        idx = _to(self.indices(step), x.device)
        if self.augment == "flip":
            rng = np.random.default_rng(seeding.derive(self.seed, "flip", step))
            mirror = _to(torch.from_numpy(rng.random(len(idx)) < 0.5).tensor_split(parts)[part], x.device)
            xb = x.index_select(0, idx.tensor_split(parts)[part])
            return torch.where(mirror.view(-1, *[1] * (xb.dim() - 1)), xb.flip(-1), xb)
        return x.index_select(0, idx.tensor_split(parts)[part])

    def labels(self, y: torch.Tensor, step: int, part: int = 0, parts: int = 1) -> torch.Tensor:
        """Step's labels from `y`, gathered where `y` is; with `parts`, chunk `part` as `inputs` cuts it.
        The whole epoch's labels are gathered once, in its order, and each step takes a slice (a view that
        nothing writes into): the head stage, the pipeline's busiest, then spends no gather per step."""
        epoch, i = divmod(step, self.steps_per_epoch)
        if self._labels_of is not y or self._labels_epoch != epoch:
            self.indices(step)  # this epoch's order
            used = self._order[:self.steps_per_epoch * self.batch_size]
            self._labels, self._labels_of, self._labels_epoch = y.index_select(0, _to(used, y.device)), y, epoch
        rows = self._labels[i * self.batch_size:(i + 1) * self.batch_size]
        return rows.tensor_split(parts)[part] if parts > 1 else rows


class TextBatches:
    """The minibatches of a token stream: step t takes `batch_size` windows of `window` tokens at offsets
    drawn from (seed, t) alone, as nanoGPT samples them, and their labels the same windows one token on.
    The first stage (inputs) and the head (labels) draw the same offsets without talking to each other.
    An epoch is as many steps as hold the stream's windows end to end (for evaluations and drains)."""

    def __init__(self, n: int, batch_size: int, seed: int, window: int):
        self.n, self.batch_size, self.seed, self.window = n, batch_size, seed, window
        self.steps_per_epoch = (n - 1) // window // batch_size
        self._span = torch.arange(window)

    def offsets(self, step: int) -> torch.Tensor:
        rng = np.random.default_rng(seeding.derive(self.seed, "windows", step))
        return torch.from_numpy(rng.integers(0, self.n - self.window, size=self.batch_size))

    def _rows(self, stream: torch.Tensor, step: int, shift: int, part: int, parts: int) -> torch.Tensor:
        at = _to(self.offsets(step).tensor_split(parts)[part][:, None] + self._span + shift, stream.device)
        return stream[at]

    def inputs(self, x: torch.Tensor, step: int, part: int = 0, parts: int = 1) -> torch.Tensor:
        return self._rows(x, step, 0, part, parts)

    def labels(self, y: torch.Tensor, step: int, part: int = 0, parts: int = 1) -> torch.Tensor:
        return self._rows(y, step, 1, part, parts)


def batches(n: int, cfg, window: int = 0):
    """The minibatches of a run (`cfg`: its Config) over `n` training samples, or over a token stream of
    `n` tokens sampled in windows of `window`."""
    tr = cfg.train
    if window:
        return TextBatches(n, tr.batch_size, tr.seed, window)
    return Batches(n, tr.batch_size, tr.seed, cfg.data.augment)


def first(t: torch.Tensor, n: int, window: int = 0, shift: int = 0) -> torch.Tensor:
    """The first n samples of `t` (a probe batch); of a token stream, its first n windows end to end
    (`shift` 1: their labels)."""
    if not window:
        return t[:n]
    n = min(n, (len(t) - 1) // window)
    return t[shift:shift + n * window].view(n, window)


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor (indices, a mask) where the data is. To a GPU through pinned memory without
    blocking: a copy from pageable memory would make the host wait for the GPU at every step."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def resident(t: torch.Tensor | None, device: torch.device | str, on_device: bool) -> torch.Tensor | None:
    """A training tensor where its minibatches are gathered: moved to `device` once when `on_device`
    (data.on_device), else left on the host and each batch copied over."""
    return t.to(device) if t is not None and on_device else t


def as_tensor(a) -> torch.Tensor:
    """A tensor over `a` without a copy; arrays read from Ray's object store are read-only, and nothing
    writes into them (batches are gathered copies)."""
    if isinstance(a, torch.Tensor):
        return a
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)
