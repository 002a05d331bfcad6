"""One way to write a file: readers see the previous file or the complete new one, never half.

Every file the library writes (checkpoints, results JSON, report tables and plots, adapter and
exported model files, similarity outputs, plan configs) goes through :func:`write_atomic`:

1. the content is written to a temporary file *beside the target* (same file system, so the
   rename below is atomic; a temporary file in ``/tmp`` would make the final move a copy);
2. the temporary file is fsynced, so a machine crash after the rename cannot expose an empty
   file, then renamed over the target and the folder fsynced, so the rename itself survives;
3. its permissions are those a plain ``open(path, "w")`` would give: the existing file's mode
   when replacing one, else ``0o666`` minus the user's umask (``mkstemp`` alone makes ``0600``,
   which hides results from the group and from other users' tools);
4. on any error, also Ctrl-C, the temporary file is removed and the previous file is untouched;
   a full disk is reported as :class:`DiskFullError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


class DiskFullError(OSError):
    """The disk filled up while writing a file; the previous version of the file is kept."""


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it (and restore it)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _is_disk_full(err: BaseException) -> bool:
    # OSError from Python; writers in other languages (safetensors) raise their own types
    return getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(
        err
    )


def write_atomic(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Create or replace ``path`` by calling ``write(temporary_path)``; returns ``path``.

    ``write`` must write the whole content to the path it is given (e.g.
    ``lambda tmp: torch.save(obj, tmp)``); writers that pick a format from the file name need
    it explicitly, since the temporary name ends in ``.tmp``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if _is_disk_full(err):
            raise DiskFullError(
                errno.ENOSPC,
                f"cannot write {path}: the disk is full (no space left on device); "
                "the previous file, if any, is unchanged. Free space and run again",
            ) from err
        raise
    _fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """:func:`write_atomic` for a text file (UTF-8)."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """:func:`write_atomic` for JSON (indented, keys sorted, so files diff well)."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
