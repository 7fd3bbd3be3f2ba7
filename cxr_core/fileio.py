"""Atomic file writes: a reader (or a crash, or a full disk) never sees half a file."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cxr_core.errors import UserError

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def atomic_write_files(files: dict[Path, bytes]) -> None:
    """Write every file to a temporary beside it and fsync, then rename them all over.

    Nothing is replaced until every byte is on disk, so a full disk or a crash while
    writing leaves the previous versions, together, as they were. A full disk is the
    user's problem to solve, reported in one line.
    """
    temps: dict[Path, str] = {}
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temps[path] = tempfile.mkstemp(
                dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
            )
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for path, tmp in temps.items():
            os.replace(tmp, path)
    except BaseException as exc:
        for tmp in temps.values():
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            names = ", ".join(p.name for p in files)
            raise UserError(
                f"disk full while writing {names} in {next(iter(files)).parent} "
                f"({exc.strerror}); the previous version is intact: free some space"
            ) from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_files({path: data})


def json_bytes(obj: Any) -> bytes:
    """A JSON record as every record file holds it."""
    return json.dumps(obj, indent=1, allow_nan=True).encode()


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
