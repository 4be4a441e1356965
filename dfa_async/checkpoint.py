"""Checkpoints: written atomically (temporary file, fsync, rename), read with ``weights_only=True`` so
loading never unpickles arbitrary objects; the newest `keep` are kept. A checkpoint that fails to load
is skipped in favour of the one before it."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

PATTERN = re.compile(r"step-(\d+)\.pt$")


def atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save(run_dir: Path, step: int, state: dict, keep: int) -> Path:
    folder = Path(run_dir) / "checkpoints"
    path = folder / f"step-{step:08d}.pt"
    atomic_save(state, path)
    for old in sorted(folder.glob("step-*.pt"), key=_step)[:-keep]:
        old.unlink()
    return path


def _step(p: Path) -> int:
    m = PATTERN.search(p.name)
    return int(m.group(1)) if m else -1


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def latest(run_dir: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads, with its contents; None when there is none."""
    for path in sorted(Path(run_dir, "checkpoints").glob("step-*.pt"), key=_step, reverse=True):
        try:
            return path, load(path)
        except Exception:  # a corrupt file: fall back to the one before it
            continue
    return None


def export(model: torch.nn.Module, path: Path) -> None:
    """The model as a plain ``state_dict`` (loadable with ``torch.load(..., weights_only=True)``)."""
    atomic_save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, Path(path))
