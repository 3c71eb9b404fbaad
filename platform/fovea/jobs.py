"""How every job script starts, fails, stops and exits: parse the command line, check the config before Ray starts,
run, print the result's summary. One runner for training, evaluation, sweeps and the benchmark.

Output: fovea's lines and real warnings; Ray's internals stay in Ray's session folder unless ``train.verbose=true``
or ``FOVEA_VERBOSE=1`` (``fovea.console``). Exit codes: 0 done, 1 a ``RunFailure`` (one line: also a Ray that
would not start or could not be reached), 2 a configuration problem (one line), 130 interrupted (SIGINT, Ctrl-C),
143 stopped by SIGTERM; each stop is one line, after the job's workers and the Ray it started are stopped.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from fovea.config import ConfigError


class RunFailure(RuntimeError):
    """A run stopped for a reason a user can act on, already phrased in one line (a checkpoint that could not be
    written or read on a worker, or training that kept producing non-finite losses)."""


def run_command(
    job: str,
    configs_dir: str | Path,
    description: str,
    argv: list[str] | None,
    *,
    check: Any,
    run: Any,
    banner: Any = None,
) -> int:
    """Any job's command line: parse, ``check(cfg)`` before Ray, ``run(cfg)``, print ``describe()`` of its result.

    Returns:
        0 on success, 130 for a result that says it was ``interrupted`` or a Ctrl-C (143: SIGTERM), 2 for a
        configuration problem, 1 for a ``RunFailure`` (each reported in one line).
    """
    from fovea.config import parse_job_args
    from fovea.console import install_console, quiet_environment, remove_console, verbose_wanted
    from fovea.paths import fovea_home
    from fovea.track import resolve_tracking_uri

    cfg = parse_job_args(job, configs_dir, argv, description=description)
    try:
        check(cfg)
        resolve_tracking_uri(cfg.track.uri)  # refuses a $MLFLOW_TRACKING_URI that carries credentials, before Ray
    except ConfigError as err:
        print(f"{job}: config error: {err}", file=sys.stderr)
        return 2
    verbose = verbose_wanted(cfg.train.verbose)
    if not verbose:
        quiet_environment(fovea_home())
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray Train's print patch tees a worker's print to stdout and its logger: each progress line came out twice.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    install_console(verbose)
    try:
        return _run(job, cfg, run, banner)
    finally:
        remove_console()


def _run(job: str, cfg: Any, run: Any, banner: Any) -> int:
    from fovea import console

    def call() -> Any:
        if banner is not None:
            print(banner(cfg), flush=True)
        return run(cfg)

    def exit_code(result: Any) -> int:
        return 128 + (console.received_signal() or signal.SIGINT) if getattr(result, "interrupted", False) else 0

    return run_stoppable(
        job,
        lambda: run_and_report(job, call, exit_code=exit_code),
        on_stop="nothing was trained yet, or no checkpoint of it was kept",
    )


def run_and_report(
    name: str,
    call: Any,
    *,
    usage: tuple[type[BaseException], ...] = (ConfigError,),
    label: str = "config error",
    exit_code: Any = None,
) -> int:
    """``call()``, then its result's ``describe()``; returns ``exit_code(result)`` (default 0). A ``usage`` error
    (a configuration problem found once the data or the model is at hand) is ``NAME: LABEL: ...`` and 2, a
    ``RunFailure`` ``NAME: ...`` and 1, each one line on stderr."""
    try:
        result = call()
    except usage as err:
        print(f"{name}: {label}: {err}", file=sys.stderr, flush=True)
        return 2
    except RunFailure as err:
        print(f"{name}: {err}", file=sys.stderr, flush=True)
        return 1
    print("\n" + result.describe(), flush=True)
    return exit_code(result) if exit_code is not None else 0


def run_stoppable(name: str, body: Any, *, on_stop: str) -> int:
    """``body()`` (a script's work, returning its exit code) with SIGINT and SIGTERM raising ``console.Stopped``; a
    stop ends the Ray the script started (or its share of a cluster) and is one line on stderr: ``NAME: stopped by
    SIGINT: <what is kept>`` (the stop's own ``detail`` when it carries one, else ``on_stop``), exit 130 or 143.

    Python's default Ctrl-C handler is not enough here: a ``KeyboardInterrupt`` raised by it while the main thread
    waits in ``ray.get`` (Ray Data's passes, a preparation's checks) was swallowed, and the script ran to its end
    (two SIGINTs to ``prepare_images.py``: finished, exit 0). A handler of fovea's own is honoured there.
    """
    from fovea import console

    console.stop_on_signals()  # again after ray.init, which sets a SIGTERM handler of its own (console.rearm_signals)
    try:
        return body()
    except (console.Stopped, KeyboardInterrupt) as stop:
        signum = stop.signum if isinstance(stop, console.Stopped) else signal.SIGINT
        detail = getattr(stop, "detail", "") or on_stop
        stop_ray()
        print(f"{name}: stopped by {signal.Signals(signum).name}: {detail}", file=sys.stderr, flush=True)
        return 128 + signum
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def stop_ray() -> None:
    """Stop the job's Ray: a local Ray it started stops (its workers with it); a cluster it joined ends the job's
    workers and actors when the driver leaves. A second Ctrl-C skips the wait."""
    if "ray" not in sys.modules:
        return
    import ray

    try:
        if ray.is_initialized():
            ray.shutdown()
    except (Exception, KeyboardInterrupt):  # the job is stopping either way
        pass
