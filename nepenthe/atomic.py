"""Files written whole or not at all: what every record, checkpoint and shipped network of a run goes through.

A reader (analysis, a resumed run, another process) sees the old file or the new one, never half of one, and a
write that fails (full disk, I/O error) leaves the old file and no temporary file behind. Temporary files are named
``.<target name>.<random>`` in the target's folder, so :class:`nepenthe.rundir.RunDir` can find those a killed process
left.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import storage_error


def temp_prefix(name: str) -> str:
    """The prefix of every temporary file written on the way to the file ``name``."""
    return f".{name}."


def write_via_temp(path: str | Path, write: Callable[[str], None]) -> Path:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it over ``path``; on any error the temporary
    file goes and the error propagates. The temporary file keeps the extension (torch.export and onnx look at it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=path.suffix)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide records from collaborators
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` via a temporary file that is fsynced before the rename. Any OSError becomes one line naming the
    path and errno (:func:`~nepenthe.errors.storage_error`)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    try:
        write_via_temp(path, write)
    except OSError as exc:
        raise storage_error("write", path, exc) from exc


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def append_line(path: str | Path, line: str) -> None:
    """Append one whole line or nothing: short writes are continued, and on an error the file is cut back to where
    it ended before, so it never ends in half a JSON object."""
    data = line.encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise storage_error("append to", path, exc) from exc
    try:
        start = os.fstat(fd).st_size
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        except OSError as exc:
            if written:
                os.ftruncate(fd, start)
            raise storage_error("append to", path, exc) from exc
    finally:
        os.close(fd)
