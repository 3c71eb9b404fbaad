"""How every job script starts, fails and exits: parse the command line, check the config before Ray starts, run,
print the result's summary. One runner for training, evaluation, sweeps and the benchmark.

Exit codes: 0 done, 1 a ``RunFailure`` (one line), 2 a configuration problem (one line), 130 interrupted.
"""

from __future__ import annotations

import os
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
        0 on success, 130 for a result that says it was ``interrupted``, 2 for a configuration problem, 1 for a
        ``RunFailure`` (each reported in one line).
    """
    from fovea.config import parse_job_args
    from fovea.track import resolve_tracking_uri

    cfg = parse_job_args(job, configs_dir, argv, description=description)
    try:
        check(cfg)
        resolve_tracking_uri(cfg.track.uri)  # refuses a $MLFLOW_TRACKING_URI that carries credentials, before Ray
    except ConfigError as err:
        print(f"{job}: config error: {err}", file=sys.stderr)
        return 2
    if banner is not None:
        print(banner(cfg))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray Train's print patch tees a worker's print to stdout and its logger: each progress line came out twice.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    try:
        result = run(cfg)
    except ConfigError as err:  # problems found once the dataset or the teacher is at hand
        print(f"{job}: config error: {err}", file=sys.stderr)
        return 2
    except RunFailure as err:
        print(f"{job}: {err}", file=sys.stderr)
        return 1
    print("\n" + result.describe(), flush=True)
    return 130 if getattr(result, "interrupted", False) else 0
