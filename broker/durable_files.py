"""Files that survive a power cut: atomic replace and append with fsync.

Both the aggregator's checkpoints and a node's outbox rest on one rule: a
file is either the old version or the complete new one, never a torn mix.
`write_atomically` gets that with write-to-temp, fsync, rename, fsync of the
directory (without the last step the rename itself may be lost on ext4).
"""

from __future__ import annotations

import os
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def fsync_directory(directory: Path) -> None:
    """Make renames and unlinks inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new file.

    `mode` (e.g. 0o600 for a secret) is set on the temp file before a byte is
    written, so the content is never readable with looser permissions.
    """
    temp = path.with_name(path.name + TEMP_SUFFIX)
    if mode is not None:
        temp.unlink(missing_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        os.fchmod(fd, mode)  # the umask may have narrowed it, never widened: set it exactly
        opened = os.fdopen(fd, "wb")
    else:
        opened = open(temp, "wb")  # noqa: SIM115 - closed by the with block below
    with opened as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    fsync_directory(path.parent)


def remove_durably(path: Path) -> None:
    """Delete `path` (if it exists) and make the deletion durable."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_directory(path.parent)


def remove_leftover_temps(directory: Path) -> int:
    """Delete temp files a crash left behind mid-write; returns how many."""
    removed = 0
    for temp in directory.glob("*" + TEMP_SUFFIX):
        temp.unlink(missing_ok=True)
        removed += 1
    return removed
