"""Reading a raw dataset's files with a bound: the size (``stat``) and, when asked, the first bytes are checked before
the rest is read, so a 2 GiB sparse file, a FIFO or a folder given as a file costs nothing. Image and video
preparation both read through here (``--max-file-mb``)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

HEAD_BYTES = 16  # enough for every format signature a head check looks at


class FileRefused(ValueError):
    """A file preparation does not read: not a regular file, too large, or refused by its first bytes (one line)."""


def amount(size: int) -> str:
    """``size`` bytes for a message: ``3.2 MB`` from 1 MiB up, else ``512 bytes``."""
    return f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{size} bytes"


def check_max_file_mb(max_file_mb: float) -> None:
    """Raise ValueError unless ``max_file_mb`` is a positive, finite number of MiB."""
    if not 0 < max_file_mb < float("inf"):
        raise ValueError(f"max_file_mb must be a positive number, got {max_file_mb}")


def read_limited(path: str, *, max_mb: float, head_check: Callable[[bytes], str] | None = None) -> bytes:
    """A local file's bytes, read only when it is a regular file of at most ``max_mb`` MiB and ``head_check`` (given
    its first :data:`HEAD_BYTES` bytes) finds no problem.

    Raises:
        FileRefused: not a regular file (a FIFO would block the read forever), too large, or what ``head_check``
            says; the file is never read whole then.
        OSError: it cannot be read.
    """
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise FileRefused("not a regular file")
    max_bytes, limit = int(max_mb * 2**20), f"over max_file_mb={max_mb:g}"
    if info.st_size > max_bytes:
        raise FileRefused(f"file too large: {amount(info.st_size)}, {limit}")
    with open(path, "rb") as file:
        head = file.read(HEAD_BYTES)
        problem = head_check(head) if head_check is not None else ""
        if problem:
            raise FileRefused(problem)
        # as many bytes as stat said (a read of the limit would allocate the whole limit first), then what the file
        # may have grown by since, in 1 MiB steps up to the limit
        chunks = [head, file.read(max(0, info.st_size - len(head)))]
        total = sum(map(len, chunks))
        while total <= max_bytes:
            chunk = file.read(min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    if total > max_bytes:
        raise FileRefused(f"file too large: over {amount(max_bytes)}, {limit}")
    return b"".join(chunks)
