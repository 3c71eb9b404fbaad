"""Checkpoint and weights files that are written atomically, checked on load and never unpickled.

A file is written under a temporary name in its folder, flushed to disk, then renamed over the final name
(``os.replace``), so a crash or a full disk leaves the previous file as it was, never half of a new one. Beside it
goes ``<file>.sha256`` in ``sha256sum`` format (``<hex digest>  <file name>``; ``sha256sum -c`` checks it too). A
load compares the file's SHA-256 with it when it is there (files from elsewhere, and checkpoints written before
fovea wrote checksums, have none), then reads the file with ``torch.load(weights_only=True)``: tensors and plain
values only. A file that would need arbitrary objects unpickled is refused, and nothing of it runs.

A Ray Train run keeps its checkpoints as sibling folders ``<storage>/<run name>/checkpoint_<timestamp>/`` (the names
sort by time). ``load_run_checkpoint`` reads the one Ray hands a resumed run, and when that one does not verify, the
newest earlier sibling that does. No Ray here: it takes the checkpoint's path and pyarrow filesystem.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch

from fovea.errors import first_line

CHECKPOINT_FILE = "checkpoint.pt"
CHECKSUM_SUFFIX = ".sha256"
RUN_CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train's folder names: checkpoint_<date and time with microseconds>
_CHUNK = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be used: missing, unreadable, not matching its checksum, or
    holding objects only unpickling could rebuild. The message is one line and names the file."""


class CheckpointWriteError(OSError):
    """A checkpoint or weights file could not be written (the previous file under that name is left as it was)."""


def checksum_path(path: str | Path) -> Path:
    """Where the checksum of ``path`` is kept: ``<path>.sha256`` beside it."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def sha256_of(path: str | Path) -> str:
    """The SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _reason(err: BaseException) -> str:
    """What went wrong, in a few words: the OS's words for the first ``OSError`` in the chain, else the first line."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return first_line(err)


def _fsync_folder(folder: Path) -> None:
    """Make the renames in ``folder`` durable (where the OS allows opening a folder)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def save_verified(path: str | Path, obj: Any, *, what: str = "checkpoint") -> str:
    """``torch.save(obj)`` to ``path`` atomically, with its SHA-256 in ``<path>.sha256``.

    Args:
        path: the final file name; its folder must exist.
        obj: tensors, containers and plain values (what ``torch.load(weights_only=True)`` reads back).
        what: the file's role in the error message (``checkpoint``, ``weights``).

    Returns:
        The file's SHA-256 hex digest.

    Raises:
        CheckpointWriteError: ``could not write <what> <path>: <reason>`` (e.g. ``No space left on device``); the
            file and checksum already under those names are left as they were, and no temporary file remains.
    """
    path = Path(path)
    sidecar = checksum_path(path)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temporary = path.with_name(f".{path.name}.{token}.tmp")
    temporary_sidecar = sidecar.with_name(f".{sidecar.name}.{token}.tmp")
    try:
        with open(temporary, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        digest = sha256_of(temporary)
        with open(temporary_sidecar, "w") as file:
            file.write(f"{digest}  {path.name}\n")
            file.flush()
            os.fsync(file.fileno())
        # A crash between these two renames leaves the new, whole file beside the old checksum (refused on load,
        # never mistaken for the old file) or, in a fresh folder, with none (read unchecked, as older checkpoints).
        os.replace(temporary, path)
        os.replace(temporary_sidecar, sidecar)
    except BaseException as err:
        for leftover in (temporary, temporary_sidecar):
            leftover.unlink(missing_ok=True)
        if isinstance(err, OSError | RuntimeError):  # torch's writer reports a failed write as a RuntimeError
            raise CheckpointWriteError(f"could not write {what} {path}: {_reason(err)}") from err
        raise
    _fsync_folder(path.parent)
    return digest


def recorded_checksum(path: str | Path) -> str | None:
    """The digest ``<path>.sha256`` records for ``path``, or None when there is no such file.

    Raises:
        CheckpointError: the checksum file is there but unreadable or malformed.
    """
    sidecar = checksum_path(path)
    try:
        text = sidecar.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{sidecar}: unreadable checksum file ({_reason(err)})") from None
    digest = text.split()[0].lower() if text.split() else ""
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise CheckpointError(f"{sidecar}: not a SHA-256 checksum file")
    return digest


def verify(path: str | Path) -> str | None:
    """Check ``path`` against the checksum beside it.

    Returns:
        The verified digest, or None when the file has no checksum (written by another tool or an older fovea).

    Raises:
        CheckpointError: the file is missing or unreadable, or its bytes do not match the checksum.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    expected = recorded_checksum(path)
    if expected is None:
        return None
    try:
        actual = sha256_of(path)
    except OSError as err:
        raise CheckpointError(f"{path}: unreadable ({_reason(err)})") from None
    if actual != expected:
        raise CheckpointError(
            f"{path}: checksum mismatch (sha256 {actual[:12]}..., {checksum_path(path).name} records "
            f"{expected[:12]}...): the file is corrupt or incomplete"
        )
    return actual


_GLOBAL = re.compile(r"GLOBAL (\S+)")
# what torch's weights-only unpickler says of bytes that are no pickle at all (rather than a pickle of objects)
_NOT_A_PICKLE = re.compile(r"Unsupported operand \d+|String is too long|unsupported persistent id|Can only append to")


def load_verified(path: str | Path, *, what: str = "checkpoint") -> Any:
    """Verify ``path`` (when it has a checksum) and read it with ``torch.load(weights_only=True)`` on the CPU.

    Raises:
        CheckpointError: one line naming the file: missing, unreadable, checksum mismatch, or a file that holds
            Python objects only unpickling could rebuild (refused before any of it runs).
    """
    path = Path(path)
    verify(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated zip, not a torch file, objects weights_only refuses, ...
        text = str(err)
        if "Weights only load failed" in text or "Unsupported global" in text:
            junk = _NOT_A_PICKLE.search(text)
            if junk:  # random bytes or a damaged file, not objects: the unpickler met what no pickle holds
                raise CheckpointError(f"{path}: unreadable {what} (not a torch file, or corrupt: {junk[0]})") from None
            found = _GLOBAL.search(text)
            needs = f" ({found[1]})" if found else ""
            raise CheckpointError(
                f"{path}: refused: the {what} holds Python objects{needs} that only unpickling could rebuild, and "
                "fovea never unpickles (save a state dict of tensors instead)"
            ) from None
        access = isinstance(err, PermissionError | FileNotFoundError | IsADirectoryError)
        hint = "" if access else ": cut short, corrupt, or not a torch file"
        raise CheckpointError(f"{path}: unreadable {what} ({_reason(err)}){hint}") from None


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write a training state as ``directory/checkpoint.pt`` (atomic, with ``checkpoint.pt.sha256``).

    Raises:
        CheckpointWriteError: ``could not write checkpoint ...: <reason>``.
    """
    path = Path(directory) / CHECKPOINT_FILE
    save_verified(path, state)
    return path


def load_checkpoint(directory: str | Path) -> dict[str, Any]:
    """Read and verify the training state ``save_checkpoint`` wrote to ``directory``.

    Raises:
        CheckpointError: one line naming the file.
    """
    path = Path(directory) / CHECKPOINT_FILE
    state = load_verified(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a fovea training checkpoint (holds a {type(state).__name__})")
    return state


# --------------------------------------------------------------------------------------------------------------------
# A run's checkpoints in Ray Train's storage (a local folder, or any pyarrow filesystem such as S3)
# --------------------------------------------------------------------------------------------------------------------


def _is_local(filesystem: Any) -> bool:
    if filesystem is None:
        return True
    import pyarrow.fs

    return isinstance(filesystem, pyarrow.fs.LocalFileSystem)


def earlier_checkpoints(path: str, filesystem: Any = None) -> list[str]:
    """The run's other checkpoint folders that are older than ``path``, newest first.

    Ray Train V2 keeps a run's checkpoints side by side as ``<run folder>/checkpoint_<timestamp>``, so the names sort
    by time; a folder newer than ``path`` is one Ray never recorded (an upload cut off), so it is not offered.

    Args:
        path: a checkpoint folder, as ``ray.train.Checkpoint.path`` gives it (a path inside ``filesystem``).
        filesystem: its pyarrow filesystem; None for the local one.
    """
    import pyarrow.fs

    filesystem = filesystem or pyarrow.fs.LocalFileSystem()
    path = path.rstrip("/")
    parent, _, name = path.rpartition("/")
    if not name.startswith(RUN_CHECKPOINT_PREFIX):
        return []
    entries = filesystem.get_file_info(pyarrow.fs.FileSelector(parent or "/", allow_not_found=True))
    older = [
        entry.base_name
        for entry in entries
        if entry.type == pyarrow.fs.FileType.Directory
        and entry.base_name.startswith(RUN_CHECKPOINT_PREFIX)
        and entry.base_name < name
    ]
    return [f"{parent}/{sibling}" for sibling in sorted(older, reverse=True)]


def _load_from(path: str, filesystem: Any, scheme: str) -> dict[str, Any]:
    """``load_checkpoint`` of a folder in ``filesystem``: read in place when local, else copied to a scratch folder."""
    if _is_local(filesystem):
        return load_checkpoint(path)
    import pyarrow.fs

    with tempfile.TemporaryDirectory(prefix="fovea-checkpoint-") as scratch:
        try:
            for name in (CHECKPOINT_FILE, CHECKPOINT_FILE + CHECKSUM_SUFFIX):
                source = f"{path}/{name}"
                if filesystem.get_file_info(source).type == pyarrow.fs.FileType.File:
                    with filesystem.open_input_stream(source) as remote, open(Path(scratch) / name, "wb") as local:
                        shutil.copyfileobj(remote, local, _CHUNK)
            return load_checkpoint(scratch)
        except OSError as err:
            raise CheckpointError(f"{scheme}{path}: could not be read ({_reason(err)})") from None
        except CheckpointError as err:  # name the file where it lives, not its scratch copy
            raise CheckpointError(str(err).replace(scratch, scheme + path)) from None


def load_run_checkpoint(
    path: str, filesystem: Any = None, *, scheme: str = "", fallback: bool = True
) -> tuple[dict[str, Any], str, str | None]:
    """The training state of a run's checkpoint folder; if it does not verify, of the newest earlier one that does.

    Args:
        path: the checkpoint folder (``ray.train.Checkpoint.path``).
        filesystem: its pyarrow filesystem (``ray.train.Checkpoint.filesystem``); None for the local one.
        scheme: put before paths in messages (``s3://`` for a path inside an S3 filesystem).
        fallback: look for earlier checkpoints of the run at all (off for a checkpoint that is not the run's own).

    Returns:
        ``(state, folder it came from, warning)``: ``warning`` is None when ``path`` itself verified, else one line
        naming the checkpoint that does not verify and the one used instead.

    Raises:
        CheckpointError: neither ``path`` nor any earlier checkpoint of the run verifies (one line).
    """
    try:
        return _load_from(path, filesystem, scheme), path, None
    except CheckpointError as err:
        if not fallback:
            raise
        first_error = err
    failed = []
    for candidate in earlier_checkpoints(path, filesystem):
        try:
            state = _load_from(candidate, filesystem, scheme)
        except CheckpointError as err:
            failed.append(str(err))
            continue
        warning = f"warning: {first_error}; resuming from the newest earlier checkpoint that verifies, "
        warning += scheme + candidate
        return state, candidate, warning
    earlier = f"; no earlier one verifies either: {' | '.join(failed)}" if failed else "; the run has no earlier one"
    raise CheckpointError(f"{first_error}{earlier}")


def checkpoint_location(checkpoint: Any) -> str:
    """A Ray checkpoint's place as a user writes it: a local path, or ``s3://bucket/...`` for one in an object store
    (``Checkpoint.path`` is the path inside its filesystem)."""
    filesystem = getattr(checkpoint, "filesystem", None)
    scheme = {"s3": "s3", "gcs": "gs", "hdfs": "hdfs"}.get(getattr(filesystem, "type_name", "local"), "")
    return f"{scheme}://{checkpoint.path}" if scheme else checkpoint.path
