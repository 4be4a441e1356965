"""A run directory on a local path, used in place, or at an fsspec URI, staged locally and synced."""
from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlparse

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ..config import ConfigError

LOG = "events.msgpack"
ATTEMPTS = 5  # tries of each remote write; a transient error (a dropped connection, a throttled request)
BACKOFF_S = 1.0  # waits 1, 2, 4, 8 s between them (object stores ask clients to back off exponentially)


def is_uri(target: str | Path) -> bool:
    """True for a URI other than file:// (which is a local path)."""
    text = str(target)
    return "://" in text and not text.startswith("file://")


def local_path(target: str | Path) -> Path:
    text = str(target)
    return Path(urlparse(text).path) if text.startswith("file://") else Path(text).expanduser()


def join(root: str | Path, name: str) -> str | Path:
    return f"{str(root).rstrip('/')}/{name}" if is_uri(root) else local_path(root) / name


READ_ONLY = ("http", "https")  # fsspec reads these, and cannot write a run


def check_target(target: str | Path, setting: str) -> None:
    """A run directory that can hold a run: not empty, not a relative file:// URI (file://a/b is host a,
    path /b), not a read-only protocol."""
    text = str(target)
    if not text.strip():
        raise ConfigError(f"{setting}: empty; give a directory (a path or a URI such as s3://bucket/runs)")
    if text.startswith("file://") and urlparse(text).netloc not in ("", "localhost"):
        raise ConfigError(f"{setting}: {text!r} is a relative file:// URI (it names host "
                          f"{urlparse(text).netloc!r}); give file:///absolute/path or a plain path")
    if is_uri(text) and text.split("://", 1)[0] in READ_ONLY:
        raise ConfigError(f"{setting}: {text!r}: {text.split('://', 1)[0]}:// is read-only for fsspec; give a "
                          "path or a writable URI such as s3://bucket/runs")


def filesystem(target: str, setting: str):
    """fsspec's filesystem and path for `target`; a one-line error naming `setting` when it has none."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(target)
    except ImportError as err:
        raise ConfigError(f"{setting}: {target!r} needs a package that is not installed ({err}); install it "
                          "or use a local path") from None
    except ValueError:
        scheme = target.split("://", 1)[0]
        raise ConfigError(f"{setting}: {target!r}: fsspec knows no protocol {scheme!r}; use a local path or one "
                          f"of {', '.join(sorted(fsspec.available_protocols()))}") from None


def _temporary(name: str) -> bool:
    return name.startswith(".") or name.endswith(".tmp")


class RunStore:
    """The run's files. `local` is where the trainer reads and writes; `name` is what to show the user.
    For a URI, `pull` fills `local` from it and `push` copies every changed file back, checkpoints first
    and the event log last (the log names the checkpoints it wrote)."""

    def __init__(self, target: str | Path, setting: str = "--run-dir"):
        check_target(target, setting)
        self.name = str(target)
        self.fs = None
        if not is_uri(target):
            self.local = local_path(target)
            return
        self.fs, self.path = filesystem(self.name, setting)
        self.path = self.path.rstrip("/")
        self.local = Path(tempfile.mkdtemp(prefix="dfa-async-run-"))
        self._pushed: dict[str, tuple[int, int]] = {}

    @property
    def remote(self) -> bool:
        return self.fs is not None

    def pull(self) -> None:
        if not self.remote or not self.fs.exists(self.path):
            return
        for src in sorted(self.fs.find(self.path)):
            rel = src[len(self.path):].lstrip("/")
            if not rel or any(_temporary(part) for part in rel.split("/")):
                continue
            dst = self.local / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(src, str(dst))
            self._pushed[rel] = self._stamp(dst)

    def push(self) -> None:
        if not self.remote:
            return
        files = {p.relative_to(self.local).as_posix(): p for p in self.local.rglob("*")
                 if p.is_file() and not any(_temporary(part) for part in p.relative_to(self.local).parts)}
        order = sorted(files, key=lambda rel: (rel == LOG, not rel.startswith("checkpoints/"), rel))
        for rel in order:
            stamp = self._stamp(files[rel])
            if self._pushed.get(rel) == stamp:
                continue
            final = f"{self.path}/{rel}"
            parent, leaf = final.rsplit("/", 1)
            self._retried(self._put, str(files[rel]), parent, leaf)
            self._pushed[rel] = stamp
        # Checkpoints rotated out locally go remotely too, after the newer ones are in place.
        for rel in [r for r in self._pushed if r not in files]:
            self._retried(self._remove, f"{self.path}/{rel}")
            del self._pushed[rel]

    def _put(self, src: str, parent: str, leaf: str) -> None:
        """One file, whole: copied under a temporary name, then moved over the old one."""
        tmp = f"{parent}/.{leaf}.{uuid.uuid4().hex}.tmp"
        self.fs.makedirs(parent, exist_ok=True)
        self.fs.put_file(src, tmp)
        self.fs.mv(tmp, f"{parent}/{leaf}")

    def _remove(self, path: str) -> None:
        if self.fs.exists(path):  # a retry after a removal whose answer was lost
            self.fs.rm_file(path)

    @staticmethod
    def _retried(fn, *args) -> None:
        for attempt in Retrying(stop=stop_after_attempt(ATTEMPTS), wait=wait_exponential(multiplier=BACKOFF_S, max=30),
                                retry=retry_if_exception_type(OSError), reraise=True):
            with attempt:
                fn(*args)

    def close(self) -> None:
        """Push what is left and drop the staging folder (kept, and named, if the push fails)."""
        if not self.remote:
            return
        try:
            self.push()
        except Exception as err:
            raise OSError(f"could not write the run to {self.name} ({err}); its files are kept in {self.local}") \
                from err
        shutil.rmtree(self.local, ignore_errors=True)

    def discard(self) -> None:
        """Drop the staging folder without pushing (a start that was refused)."""
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        st = path.stat()
        return st.st_size, st.st_mtime_ns


def _writable(folder: Path, setting: str) -> None:
    """Make `folder` and check that a file can be written in it, before any work is done."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except FileExistsError:
        raise ConfigError(f"{setting}: {folder} is a file, not a directory; choose a directory") from None
    except NotADirectoryError:
        raise ConfigError(f"{setting}: {folder} lies under a file; choose a directory") from None
    except OSError as err:
        raise ConfigError(f"{setting}: cannot write in {folder} ({err.strerror}); choose a directory you can "
                          "write to") from None


def open_run(target: str | Path, setting: str = "--run-dir") -> RunStore:
    """The run directory at `target`, pulled into its staging folder if it is a URI."""
    store = RunStore(target, setting)
    if not store.remote:
        _writable(store.local, setting)
    store.pull()
    return store
