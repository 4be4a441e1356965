"""The run directory: where a run lives (a new directory under train.root, or --run-dir, a path or an
fsspec URI) and what it holds before the run starts (the checkpoint to resume from, settings changed since
the run began). A directory that holds another run, or a finished one, is refused."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from . import checkpoint, config as config_mod, runlog, storage
from .config import Config, ConfigError
from .stage import Plan


def in_ray_job_copy(path: Path) -> bool:
    """True for a path inside the copy of a working dir that Ray made for a job (deleted with the job)."""
    parts = Path(path).resolve().parts
    return "runtime_resources" in parts and any(p.startswith("_ray_pkg_") for p in parts)


def prepare(cfg: Config, run_dir: str | Path | None) -> storage.RunStore:
    """The run's store: `run_dir`, or a new directory under train.root (a path or an fsspec URI)."""
    root = cfg.train.root
    if run_dir is None and not storage.is_uri(root) and in_ray_job_copy(storage.local_path(root)):
        raise ConfigError(f"train.root: {root!r} is inside the copy of the working dir that Ray made for "
                          f"this job ({storage.local_path(root).resolve()}), which Ray deletes; give an absolute "
                          "path on storage every node shares, e.g. --set train.root=/mnt/shared/runs, or a URI "
                          "such as s3://bucket/runs")
    if run_dir is not None and not storage.is_uri(run_dir) and in_ray_job_copy(storage.local_path(run_dir)):
        raise ConfigError(f"--run-dir {run_dir}: inside the copy of the working dir that Ray made for this job, "
                          "which Ray deletes; give an absolute path on storage every node shares, or a URI")
    if run_dir is None:
        name = cfg.train.name or (f"{cfg.data.name}-{cfg.model.kind}-{cfg.feedback.rule}-"
                                  f"{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}")
        return storage.open_run(storage.join(root, name), "train.root")
    return storage.open_run(run_dir)


@dataclass
class Start:
    """What the run directory holds for this start."""
    found: tuple | None  # (path, state) of the checkpoint to resume from; None: start at step 0
    skipped: list        # newer checkpoints passed over: (name, reason)
    changed: list        # settings changed since the run began (only those that do not change learning)
    fresh: bool          # nothing was there before (no log, no checkpoint)


def check(store: storage.RunStore, cfg: Config, plan: Plan) -> Start:
    """What to resume from; refuses a directory that holds another run (other settings, even with its
    config.toml gone: every checkpoint carries the settings) or a finished one."""
    run_dir, shown, total = store.local, store.name, plan.total_steps
    saved = config_mod.to_toml(cfg)
    cfg_path, log_path = run_dir / "config.toml", run_dir / "events.msgpack"
    for path in (cfg_path, log_path, run_dir / "checkpoints"):
        if path.exists() and path.is_dir() != (path.name == "checkpoints"):
            raise ConfigError(f"--run-dir {shown}: {path.name} is a {'directory' if path.is_dir() else 'file'}; "
                              "this is not a run directory that dfa-async wrote, choose another")
    found, skipped = checkpoint.newest(run_dir)
    old = record = None
    try:
        if cfg_path.exists():
            record = tomllib.loads(cfg_path.read_text())
        if found is not None and "settings" in found[1]:
            old = tomllib.loads(found[1]["settings"])
        elif record is not None:
            old = record
        elif log_path.exists():
            configs = runlog.read(log_path, "config")
            old = configs[0]["config"] if configs else None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        raise ConfigError(f"--run-dir {shown}: its config.toml is not valid TOML; restore it or choose another "
                          "directory") from None
    changed = []
    if old is not None:
        if record is not None and record is not old and (edited := config_mod.differences(old, record, True)):
            raise ConfigError(f"--run-dir {shown}: its config.toml was edited after the run began ({edited[0]}"
                              f"{'; …' if len(edited) > 1 else ''}); a run's settings cannot change on resume: "
                              "restore the file, or start a new run (another --run-dir) with the new settings")
        learned = config_mod.differences(old, cfg.to_dict(), learned_only=True)
        if learned:
            raise ConfigError(f"--run-dir {shown}: holds a run with other settings ({'; '.join(learned[:3])}"
                              f"{'; …' if len(learned) > 3 else ''}); resume it with its settings or choose "
                              "another directory")
        changed = config_mod.differences(old, cfg.to_dict())
    reached = int(found[1]["step"]) if found is not None else -1
    if reached >= total and any(c.split(":")[0] in config_mod.EXTENDABLE for c in changed):
        raise ConfigError(f"--run-dir {shown}: the run has reached step {reached + 1}, beyond the {total} steps "
                          "train.max_steps and train.epochs now give; a resumed run can be made longer, not shorter")
    if found is not None and (why := checkpoint.mismatch(found[1], plan.shell())):
        raise ConfigError(f"--run-dir {shown}: checkpoint {found[0].name} does not fit this model ({why}); "
                          "choose another directory")
    if (found is not None and int(found[1]["step"]) >= total - 1 and log_path.exists()
            and runlog.read(log_path, "done")):
        raise ConfigError(f"--run-dir {shown}: holds a finished run; choose another directory")
    if found is None and not skipped and log_path.exists() and (kept := runlog.read(log_path, "checkpoint")):
        raise ConfigError(f"--run-dir {shown}: its log records checkpoints up to {kept[-1]['path']}, but "
                          "checkpoints/ holds none; restore them to resume, or choose another directory to start "
                          "again (this one would restart from step 0)")
    fresh = found is None and not log_path.exists()
    if not cfg_path.exists() or changed:  # the record of the settings in effect
        write_text(cfg_path, saved)
    return Start(found, skipped, changed, fresh)


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")  # the name checkpoint.clean removes after a crash
    tmp.write_text(text)
    tmp.replace(path)
