"""Rows that fail to decode while a run trains: skipped where they fail, counted, and told to the training worker.

The decode steps (:class:`~fovea.data.clips.DecodeClips`, :class:`~fovea.data.transforms.DecodeImages`) run in Ray
Data tasks. Each row that no longer decodes is dropped with :func:`skip_row` (a warning naming its file, and a note
in this process); after each batch, :func:`flush_batch` sends the batch's notes, when it dropped any, to the run's
tally in one call: a small named actor that :func:`open_tally` starts on the driver before training. Rank 0 of the
training workers takes each epoch's totals with :func:`take_failures` for its per-epoch warning, which then names
the first file instead of guessing at a shard. Outside a run (no tally, or no Ray), the warnings are all there is.

Every call to the tally is guarded: counting failures never costs a batch or an epoch.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from fovea.errors import first_line, typed_line

log = logging.getLogger(__name__)

TALLY_NAME = "fovea_decode_failures"
TALLY_TIMEOUT_S = 30.0  # the most a batch or an epoch waits on the tally (still starting, say) before going on


@dataclass
class DecodeFailures:
    """Rows that failed to decode, and the first of them: its file (``""`` when the row names none) and reason."""

    rows: int = 0
    first_path: str = ""
    first_reason: str = ""

    def add(self, rows: int, path: str, reason: str) -> None:
        if rows and not self.rows:
            self.first_path, self.first_reason = path, reason
        self.rows += rows

    def describe(self) -> str:
        """``3 rows failed to decode (the first: /data/a.mp4: damaged: ...)``."""
        first = f"{self.first_path}: {self.first_reason}" if self.first_path else self.first_reason
        noun = "row" if self.rows == 1 else "rows"
        return f"{self.rows} {noun} failed to decode (the first: {first})" if first else f"{self.rows} {noun} failed"


class _Notes(threading.local):
    """This thread's failures in the batch it is decoding."""

    def __init__(self) -> None:
        self.batch = DecodeFailures()


_notes = _Notes()
_tally: Any = None  # this process's handle on the tally actor, once found
_owned: Any = None  # the handle open_tally started the actor with, kept for the actor's life


def skip_row(kind: str, batch: Any, index: int, err: BaseException) -> None:
    """Note that row ``index`` of ``batch`` (a mapping of columns) did not decode, with a warning naming its file.

    Args:
        kind: what the row holds (``image``, ``video``), for the warning.
        batch: the batch being decoded; its ``path`` column, when it has one, names the file.
        index: the row's position in the batch.
        err: what went wrong.
    """
    paths = batch.get("path") if hasattr(batch, "get") else None
    path = str(paths[index]) if paths is not None and 0 <= index < len(paths) else ""
    # a decoder's own error (ValueError, OSError) says what is wrong; any other needs its type to make sense
    reason = first_line(err, limit=300) if isinstance(err, ValueError | OSError) else typed_line(err, limit=300)
    log.warning("skipping %s %s: it does not decode (%s)", kind, path or f"row {index} of its batch", reason)
    _notes.batch.add(1, path, reason)


def begin_batch() -> None:
    """Forget notes left by a decode step that ran without a flush (so a batch reports only its own rows)."""
    _notes.batch = DecodeFailures()


def flush_batch() -> DecodeFailures | None:
    """Send the failures :func:`skip_row` noted since the last flush to the run's tally (one call), and forget them.

    Returns:
        The failures sent (None when there were none).
    """
    noted, _notes.batch = _notes.batch, DecodeFailures()
    if not noted.rows:
        return None
    tally = _find_tally()
    if tally is None:
        return noted
    import ray  # _find_tally found Ray running

    try:
        # waited for, so the count is in before the batch reaches the worker that reads the totals
        ray.get(tally.add.remote(noted.rows, noted.first_path, noted.first_reason), timeout=TALLY_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        pass  # the call stays queued: the count arrives late, maybe in the next epoch's
    except Exception as err:  # noqa: BLE001 - the tally is a courtesy: never fail a batch over it
        _forget_tally()
        log.warning("could not count %d failed rows in the run's tally: %s", noted.rows, first_line(err))
    return noted


class FlushEachBatch:
    """A ``map_batches`` callable that runs ``decode`` and then :func:`flush_batch`, for decode steps that only call
    :func:`skip_row` (:class:`~fovea.data.transforms.DecodeImages`)."""

    def __init__(self, decode: Any) -> None:
        self.decode = decode

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        begin_batch()
        try:
            return self.decode(batch)
        finally:
            flush_batch()


class _Tally:
    """The run's totals since the last :meth:`take`."""

    def __init__(self) -> None:
        self.failures = DecodeFailures()

    def add(self, rows: int, path: str, reason: str) -> None:
        self.failures.add(rows, path, reason)

    def take(self) -> tuple[int, str, str]:
        taken, self.failures = self.failures, DecodeFailures()
        return taken.rows, taken.first_path, taken.first_reason


def open_tally() -> None:
    """Start the tally (or empty the one already running) where a run's datasets are built; a no-op without Ray.

    The actor belongs to the calling process (the driver), so it lasts as long as the run; it takes no CPU. Runs
    that share one Ray job (a sweep's trials) share it too: their counts mix.
    """
    global _tally, _owned
    try:
        import ray

        if not ray.is_initialized():
            return
        try:
            tally = ray.get_actor(TALLY_NAME)
        except ValueError:  # none yet: start it, and keep the handle that made it (Ray ends an actor whose
            # creating handle is dropped, named or not)
            actor = ray.remote(num_cpus=0, max_restarts=0)(_Tally)
            tally = _owned = actor.options(name=TALLY_NAME, get_if_exists=True).remote()
        _tally = tally
        tally.take.remote()  # counts left by an earlier run in this Ray job
    except Exception as err:  # noqa: BLE001 - without a tally the warnings still name every file
        _forget_tally()
        log.warning("no decode-failure tally for this run: %s", first_line(err))


def take_failures() -> DecodeFailures | None:
    """The failures counted since the last take, and start again (the training worker, once an epoch).

    Returns:
        None when there is no tally to ask (no Ray, or no run started one) or it did not answer.
    """
    tally = _find_tally()
    if tally is None:
        return None
    try:
        import ray

        rows, path, reason = ray.get(tally.take.remote(), timeout=TALLY_TIMEOUT_S)
    except Exception:  # noqa: BLE001
        _forget_tally()
        return None
    return DecodeFailures(rows, path, reason)


def _find_tally() -> Any:
    global _tally
    try:
        import ray

        if not ray.is_initialized():
            return None
        if _tally is None:
            _tally = ray.get_actor(TALLY_NAME)
    except Exception:  # noqa: BLE001 - ValueError when no run started one
        return None
    return _tally


def _forget_tally() -> None:
    global _tally
    _tally = None
