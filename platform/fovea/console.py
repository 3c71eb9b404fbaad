"""What a job prints, and how it stops: fovea's own lines and real warnings, a live progress line, one line on
Ctrl-C or SIGTERM.

By default Ray's internals stay in Ray's session folder (``<session>/logs``, printed once): Ray Train's and Ray
Data's loggers are set to warnings and errors only, Ray Data's console to errors (its log file keeps everything),
Ray's own driver messages to errors, and the few lines no documented setting reaches (a C++ core-worker notice,
MLflow's registration echo) are dropped by a narrow filter on the driver's output. ``train.verbose=true`` or
``FOVEA_VERBOSE=1`` leaves all of it as Ray prints it.

Step progress: a training worker prints ``fovea-progress {json}`` lines (``fovea.train.progress``); the driver's
output filter turns them into one live line in a terminal (``\\r``, redrawn in place) and, when the output is a
file or a pipe, into a plain line at most every ``FOVEA_PROGRESS_EVERY_S`` seconds (30 by default).

Signals: ``stop_on_signals`` makes SIGINT and SIGTERM raise :class:`Stopped` in the main thread, and
``run_watched`` runs a blocking call (Ray Train's ``fit``) in a helper thread so that Ray Train's own SIGINT
handler, which swallows the interrupt, is not installed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

VERBOSE_ENV = "FOVEA_VERBOSE"
PROGRESS_EVERY_ENV = "FOVEA_PROGRESS_EVERY_S"
PROGRESS_MARK = "fovea-progress "
PLAIN_EVERY_S = 30.0
LIVE_EVERY_S = 1.0

# Lines no documented Ray or MLflow setting keeps off the console; each pattern matches one known message only.
NOISE = (
    # Ray Train's controller starts its PreemptionWatcher with arguments in the object store (a C++ notice)
    re.compile(r"core_worker\.cc:\d+: Actor with class name: 'PreemptionWatcher'"),
    # Ray Train's worker logs each report at INFO through a logger named by its file path, which the run's
    # LoggingConfig(log_level) does not reach (ray/train/v2/_internal/execution/context.py)
    re.compile(r"Reporting training result \d+: TrainingReport\("),
    # MLflow echoes each registration on stderr; fovea's summary names the registered version
    re.compile(r"^(Successfully registered model '|Created version '\d+' of model ')"),
    # MLflow's advice to type-hint a PythonModel's predict (fovea's model wrapper, not the user's code), and the
    # source line Python prints under it; log_model shows it whatever the warnings filters say ("once")
    re.compile(r"UserWarning: (\x1b\[\d+m)?Add type hints to the `predict` method"),
    re.compile(r"^  color_warning\($"),
    # On a cluster (`ray job submit`, RAY_ADDRESS) Ray Data runs in processes the driver did not start, so
    # quiet_environment's logging config does not reach them and Ray forwards their console lines to the driver:
    # each dataset pass's finishing line and progress-bar notice, and the deprecation Ray Train's own dataset
    # manager triggers (with the source line Python prints under it)
    re.compile(r"^\((SplitCoordinator|DatasetManager|[\w.]*_StatsActor)\b[^)]*\) \S*\s*Dataset \S+ execution finished"),
    re.compile(r"^\([\w.:]+ pid=[^)]*\) Progress bars disabled\. To enable, set `ray\.data\.DataContext"),
    re.compile(r"RayDeprecationWarning: `ExecutionOptions\.exclude_resources` is deprecated"),
    re.compile(r"^\((DatasetManager|SplitCoordinator)\b[^)]*\)\s+self\.exclude_resources = exclude_resources$"),
)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# Ray Data's console: errors only (the default config's "console" handler is at INFO); its file log keeps all.
RAY_DATA_LOGGING = """\
version: 1
disable_existing_loggers: false
formatters:
  ray: {format: "%(asctime)s\\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"}
filters:
  console_filter: {"()": ray.data._internal.logging.HiddenRecordFilter}
handlers:
  file: {class: ray.data._internal.logging.SessionFileHandler, formatter: ray, filename: ray-data.log}
  console: {class: ray._private.log.PlainRayHandler, formatter: ray, level: ERROR, filters: [console_filter]}
loggers:
  ray.data: {level: DEBUG, handlers: [file, console], propagate: false}
"""
# Ray Train's own dataset manager uses the option Ray Data deprecated; a user cannot act on it.
DEPRECATION_FILTER = "ignore:`ExecutionOptions.exclude_resources` is deprecated"


def verbose_wanted(flag: bool = False) -> bool:
    """``train.verbose`` (``flag``) or ``$FOVEA_VERBOSE`` set to 1/true/yes."""
    return flag or os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def quiet_environment(home: Path) -> None:
    """Environment defaults that keep Ray's and MLflow's internals off the console (set before Ray starts, so a
    local Ray's processes inherit them). A variable the user set is left as it is.

    Args:
        home: where the Ray Data logging config is written (fovea's home folder).
    """
    config = home / "ray-data-logging.yaml"
    try:
        if not config.is_file() or config.read_text() != RAY_DATA_LOGGING:
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(RAY_DATA_LOGGING)
        os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(config))
    except OSError:  # a read-only home: Ray Data's lines stay, nothing else changes
        pass
    warnings = os.environ.get("PYTHONWARNINGS", "")
    if DEPRECATION_FILTER not in warnings:
        os.environ["PYTHONWARNINGS"] = f"{warnings},{DEPRECATION_FILTER}" if warnings else DEPRECATION_FILTER
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


class _DropMessage(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def quiet_driver_loggers() -> None:
    """Ray's driver messages (the local instance started, its auth token) to errors only, and MLflow's note on
    pickled PyTorch models (fovea's choice, not the user's) dropped. Call after ``import ray``."""
    logging.getLogger("ray").setLevel(logging.ERROR)
    logging.getLogger("mlflow.pytorch").addFilter(_DropMessage("Saving pytorch model by Pickle"))


# --- the progress line ------------------------------------------------------------------------------------------


def format_rate(per_s: float) -> str:
    """A rate with digits enough to read: ``123``, ``12.3``, ``1.23``, ``0.042``."""
    if per_s >= 100:
        return f"{per_s:.0f}"
    if per_s >= 10:
        return f"{per_s:.1f}"
    if per_s >= 1:
        return f"{per_s:.2f}"
    return f"{per_s:.2g}" if per_s > 0 else "0"


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}:{seconds:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def progress_text(info: dict[str, Any], width: int = 20) -> str:
    """One progress record as a line: ``epoch 1/3 [#####.....] 5/10 steps | 12.3 samples/s | loss 2.1 | ETA 4 s``.

    ``info``: ``epoch``, ``epochs``, ``step``, ``steps``, ``elapsed_s``, ``samples`` (over all workers), ``loss``,
    optional ``prefix``, ``what`` (``steps``, ``files`` ...), ``unit`` (of the rate: ``samples``) and ``note``.
    """
    done, total = int(info["step"]), max(1, int(info["steps"]))
    filled = min(width, width * done // total)
    bar = "#" * filled + "." * (width - filled)
    elapsed = float(info.get("elapsed_s", 0.0))
    head = f"{info.get('prefix', '')}"
    if "epoch" in info:
        head += f"epoch {info['epoch']}/{info['epochs']} "
    line = f"{head}[{bar}] {done}/{total} {info.get('what', 'steps')}"
    if elapsed > 0 and "samples" in info:
        line += f" | {format_rate(float(info['samples']) / elapsed)} {info.get('unit', 'samples')}/s"
    if info.get("loss") is not None:
        line += f" | loss {float(info['loss']):.4f}"
    if info.get("note"):
        line += f" | {info['note']}"
    if 0 < done < total and elapsed > 0:
        line += f" | ETA {format_duration(elapsed / done * (total - done))}"
    return line


class ProgressRenderer:
    """Draws progress records: live (``\\r`` and clear-to-end, redrawn in place) on a terminal, else a plain line
    at most every ``every_s`` seconds. Other lines clear the live line before they are written."""

    def __init__(self, out: TextIO, *, live: bool, every_s: float = PLAIN_EVERY_S, clock: Callable = time.monotonic):
        self.out, self.live, self.every_s, self.clock = out, live, every_s, clock
        self.showing = False  # a live line is on screen
        self.last_plain: float | None = None
        self.lock = threading.RLock()

    def show(self, info: dict[str, Any]) -> None:
        text = progress_text(info)
        with self.lock:
            if self.live:
                self.out.write("\r" + text + "\x1b[K")
                self.showing = True
            else:
                now = self.clock()
                if self.last_plain is not None and now - self.last_plain < self.every_s:
                    return
                self.last_plain = now
                self.out.write(text + "\n")
            self.out.flush()

    def clear(self) -> None:
        """Take the live line off the screen (before another line is written)."""
        with self.lock:
            if self.showing:
                self.out.write("\r\x1b[K")
                self.out.flush()
                self.showing = False


class FilteredStream(io.TextIOBase):
    """A driver's stdout or stderr: whole lines pass on, except the known noise (unless verbose) and the workers'
    progress records, which go to the renderer. Thread-safe: Ray's log relay writes from its own thread."""

    def __init__(self, target: TextIO, renderer: ProgressRenderer, *, verbose: bool) -> None:
        super().__init__()
        self.target, self.renderer, self.verbose = target, renderer, verbose
        self.pending = ""
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.target.isatty()

    def fileno(self) -> int:
        return self.target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.target, "encoding", "utf-8")

    def write(self, text: str) -> int:
        with self.renderer.lock:
            self.pending += text
            *lines, self.pending = self.pending.split("\n")
            for line in lines:
                self._line(line)
        return len(text)

    def flush(self) -> None:
        with self.renderer.lock:
            self.target.flush()

    def _line(self, line: str) -> None:
        plain = ANSI.sub("", line)
        at = plain.find(PROGRESS_MARK)
        if at >= 0:
            try:
                info = json.loads(plain[at + len(PROGRESS_MARK) :])
            except ValueError:
                info = None
            if isinstance(info, dict):
                self.renderer.show(info)
                return
        if not self.verbose and any(pattern.search(plain) for pattern in NOISE):
            self.dropped += 1
            return
        self.renderer.clear()
        self.target.write(line + "\n")
        self.target.flush()


class Console:
    """The driver's output for one job: ``install`` puts the filters on stdout and stderr, ``restore`` takes them
    off (the live line cleared)."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.saved: tuple[TextIO, TextIO] | None = None
        self.renderer: ProgressRenderer | None = None

    @property
    def live(self) -> bool:
        return self.renderer is not None and self.renderer.live

    def progress_every_s(self) -> float:
        """How often a worker should send a progress record: each second for a live line, else as often as the
        plain lines are printed (0: no console installed, no records)."""
        if self.renderer is None:
            return 0.0
        return LIVE_EVERY_S if self.renderer.live else max(0.05, self.renderer.every_s)

    def install(self) -> Console:
        if self.saved is not None:
            return self
        out, err = sys.stdout, sys.stderr
        every = os.environ.get(PROGRESS_EVERY_ENV, "")
        try:
            every_s = max(0.0, float(every)) if every else PLAIN_EVERY_S
        except ValueError:
            every_s = PLAIN_EVERY_S
        live = out.isatty() and os.environ.get("TERM", "") != "dumb"
        self.renderer = ProgressRenderer(out, live=live, every_s=every_s)
        self.saved = (out, err)
        sys.stdout = FilteredStream(out, self.renderer, verbose=self.verbose)  # type: ignore[assignment]
        sys.stderr = FilteredStream(err, self.renderer, verbose=self.verbose)  # type: ignore[assignment]
        return self

    def restore(self) -> None:
        if self.saved is None:
            return
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, FilteredStream) and stream.pending:
                stream.write("\n")
        if self.renderer is not None:
            self.renderer.clear()
        sys.stdout, sys.stderr = self.saved
        self.saved = None


_active: Console | None = None


def install_console(verbose: bool) -> Console:
    """Put the job's output filter in place (once per process); later calls return the same console."""
    global _active
    if _active is None:
        _active = Console(verbose).install()
    return _active


def active_console() -> Console | None:
    """The console a job installed, or None (a library call: workers send no progress records)."""
    return _active


def remove_console() -> None:
    global _active
    if _active is not None:
        _active.restore()
        _active = None


# --- signals ------------------------------------------------------------------------------------------------------


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived: the job stops (a BaseException, so that ``except Exception`` lets it through)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM


_received: int | None = None


def received_signal() -> int | None:
    """The stop signal this process received (None: none)."""
    return _received


def _raise_stopped(signum: int, frame: Any) -> None:
    global _received
    _received = signum
    # a second signal while the job winds down interrupts the wind-down (KeyboardInterrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Stopped(signum)


def stop_on_signals() -> bool:
    """SIGINT and SIGTERM raise :class:`Stopped` in the main thread (after ``ray.init``, which sets its own SIGTERM
    handler). False, and nothing changed, outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGINT, _raise_stopped)
    signal.signal(signal.SIGTERM, _raise_stopped)
    return True


def rearm_signals() -> None:
    """After ``ray.init`` (which sets a SIGTERM handler of its own): where SIGINT raises :class:`Stopped` (a job or
    script under ``fovea.jobs.run_stoppable``), SIGTERM does again too. A library call keeps what it had."""
    if signal.getsignal(signal.SIGINT) is _raise_stopped:
        stop_on_signals()


def _sigterm_to_tune(signum: int, frame: Any) -> None:
    global _received
    if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None):  # Tune is not running (yet)
        _raise_stopped(signum, frame)
    _received = signum
    os.kill(os.getpid(), signal.SIGUSR1)


def stop_sweep_on_sigterm() -> None:
    """SIGTERM stops a Ray Tune sweep the way Ctrl-C does (Tune saves the sweep's state, the trials stop): Tune
    takes SIGUSR1 for that while ``Tuner.fit`` runs. Before and after it, SIGTERM raises :class:`Stopped`."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGTERM, _sigterm_to_tune)


def run_watched(call: Callable[[], Any]) -> Any:
    """``call()`` in a helper thread while the main thread waits, so signals reach the main thread (and libraries
    that install a SIGINT handler when called from the main thread, as Ray Train's ``fit`` does, do not). Outside
    the main thread (a Ray Tune trial) ``call()`` runs directly.

    Raises:
        Stopped: a signal arrived while waiting (the helper thread is left to die with the process).
        BaseException: whatever ``call()`` raised.
    """
    if threading.current_thread() is not threading.main_thread():
        return call()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as err:  # handed to the main thread
            outcome["error"] = err

    thread = threading.Thread(target=target, name="fovea-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.2)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
