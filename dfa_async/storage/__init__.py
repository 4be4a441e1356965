"""Where a run's files live: a local (or shared, e.g. NFS) directory, or a URI that fsspec understands
(``s3://``, ``gs://``, ``memory://``, …), as Ray Train's ``storage_path``.

A local run directory is used in place. A URI run works in a local staging folder: pulled from the URI
when the run starts (so a resume sees the checkpoints and the log), pushed at every checkpoint and at
the end. Each push writes a file under a temporary name and then renames it, so a reader of the URI
sees either the old or the new file, never half of one (on object stores, where a rename is a copy,
the new object appears whole). A driver killed between pushes loses at most the log records written
since the last checkpoint; the checkpoints themselves are pushed before the log that names them."""
from __future__ import annotations

from .remote import RunStore, is_uri, join, local_path, open_run

__all__ = ["RunStore", "is_uri", "join", "local_path", "open_run"]
