"""Checkpoints: written atomically (temporary file, fsync, rename), read with ``weights_only=True`` so
loading never unpickles arbitrary objects; the newest `keep` are kept. Each carries a SHA-256 of its
contents (`digest`), checked at load: a checkpoint that fails to load or whose contents changed on disk
is skipped in favour of the one before it (and the driver says so); a state that is not finite is never
written."""
from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from pathlib import Path

import torch

PATTERN = re.compile(r"step-(\d+)\.pt$")


def atomic_save(obj, path: Path) -> None:
    # Serialized in memory first: torch's archive writer turns a full disk into a RuntimeError ("unexpected
    # pos …") that names neither the file nor the cause; a plain write raises ENOSPC / EFBIG with both.
    buf = io.BytesIO()
    torch.save(obj, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def nonfinite(blocks: dict) -> str | None:
    """The first block (key) whose weights or optimizer state hold a NaN or an infinity; None if none does."""
    def bad(obj) -> bool:
        if isinstance(obj, torch.Tensor):
            return obj.is_floating_point() and not bool(torch.isfinite(obj).all())
        if isinstance(obj, dict):
            return any(bad(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return any(bad(v) for v in obj)
        return False
    return next((k for k, v in blocks.items() if bad(v)), None)


def digest(obj) -> str:
    """SHA-256 of a state's contents: every key, value and tensor byte, in a fixed order (torch.load does
    not check the archive's own CRCs: a flipped byte inside a tensor loads without complaint)."""
    h = hashlib.sha256()

    def feed(o):
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(o.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(o, dict):
            h.update(f"D{len(o)}".encode())
            for k in sorted(o, key=repr):
                h.update(repr(k).encode())
                feed(o[k])
        elif isinstance(o, (list, tuple)):
            h.update(f"L{len(o)}".encode())
            for v in o:
                feed(v)
        else:
            h.update(repr(o).encode())
    feed(obj)
    return h.hexdigest()


def save(run_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Write step's checkpoint and drop all but the newest `keep`; refuses state that is not finite."""
    block = nonfinite(state["blocks"])
    if block is not None:
        raise FloatingPointError(f"training diverged: block {block}'s weights are not finite after step {step}; "
                                 "no checkpoint was written (lower optim.lr, or train.on_nonfinite = skip)")
    folder = Path(run_dir) / "checkpoints"
    path = folder / f"step-{step:08d}.pt"
    atomic_save({**state, "sha256": digest(state)}, path)
    for old in sorted(folder.glob("step-*.pt"), key=_step)[:-keep]:
        old.unlink()
    return path


def _step(p: Path) -> int:
    m = PATTERN.search(p.name)
    return int(m.group(1)) if m else -1


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _first_line(err: BaseException, limit: int = 120) -> str:
    return ((str(err).splitlines() or [""])[0] or type(err).__name__)[:limit]


def newest(run_dir: Path) -> tuple[tuple[Path, dict] | None, list[tuple[str, str]]]:
    """The newest checkpoint that loads and is well formed, with its contents (None when there is none),
    and the newer ones passed over, each with the reason."""
    skipped = []
    for path in sorted(Path(run_dir, "checkpoints").glob("step-*.pt"), key=_step, reverse=True):
        try:
            state = load(path)
        except Exception as err:  # truncated, or not a checkpoint at all
            skipped.append((path.name, f"does not load: {_first_line(err)}"))
            continue
        if not (isinstance(state, dict) and isinstance(state.get("step"), int) and isinstance(state.get("blocks"), dict)):
            skipped.append((path.name, "is not a dfa-async checkpoint (no step and blocks)"))
            continue
        saved = state.pop("sha256", None)  # (checkpoints of versions before 2026-12-04 have none)
        if saved is not None and saved != digest(state):
            skipped.append((path.name, "is damaged (its contents do not match the checksum written with it)"))
            continue
        return (path, state), skipped
    return None, skipped


def mismatch(state: dict, model: torch.nn.Sequential) -> str | None:
    """How `state` (a checkpoint's) does not fit `model`: the first missing block or tensor, or shape that
    differs; None when it fits."""
    for k, block in enumerate(model):
        saved = state["blocks"].get(str(k))
        if not isinstance(saved, dict) or not isinstance(saved.get("block"), dict):
            return f"block {k} is missing"
        for name, tensor in block.state_dict().items():
            other = saved["block"].get(name)
            if not isinstance(other, torch.Tensor):
                return f"block {k} has no {name}"
            if other.shape != tensor.shape:
                return (f"block {k} {name} is {'x'.join(map(str, other.shape))} there, "
                        f"{'x'.join(map(str, tensor.shape))} in this model")
    if len(state["blocks"]) != len(model):
        return f"{len(state['blocks'])} blocks there, {len(model)} in this model"
    return None


def latest(run_dir: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads, with its contents; None when there is none."""
    return newest(run_dir)[0]


def clean(run_dir: Path) -> list[str]:
    """Remove the temporary files of interrupted writes (checkpoints, config, log); call it holding the
    run's lock, so that no live write is touched. Returns what was removed."""
    run_dir = Path(run_dir)
    gone = []
    for path in [*run_dir.glob("checkpoints/.step-*"), *run_dir.glob(".*.tmp")]:
        if path.is_file():
            path.unlink()
            gone.append(str(path.relative_to(run_dir)))
    return gone


def export(model: torch.nn.Module, path: Path) -> None:
    """The model as a plain ``state_dict`` (loadable with ``torch.load(..., weights_only=True)``)."""
    atomic_save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, Path(path))
