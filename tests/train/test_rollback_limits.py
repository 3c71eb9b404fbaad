"""Numeric faults: running out of rollbacks stops the run in one line; the settings are checked. The rollback itself
runs end to end in ``tests/e2e/test_hardening_drill.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from fovea.config import build_config

ROOT = Path(__file__).resolve().parents[2]


def test_non_finite_training_stops_the_job_in_one_line():
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    from fovea.train.checks import checkpoint_failure
    from fovea.train.rollback import NonFiniteTraining

    reason = "epoch 2: 5 steps in a row with a non-finite loss or gradient, up to step 15; stopping: x"
    error = WorkerGroupError("failed", {1: UserExceptionWithTraceback(NonFiniteTraining(reason), "traceback")})
    assert checkpoint_failure(error) == f"worker 1: {reason}"


def test_nonfinite_settings_are_checked():
    cfg = build_config([{"train": {"nonfinite_action": "stop", "max_rollbacks": 0, "rollback_lr_factor": 0.1}}])
    assert (cfg.train.nonfinite_action, cfg.train.max_rollbacks, cfg.train.nonfinite_patience) == ("stop", 0, 20)
    for bad in ({"rollback_lr_factor": 1.0}, {"nonfinite_action": "ignore"}, {"nonfinite_patience": -1}):
        with pytest.raises(ValueError, match="train\\."):
            build_config([{"train": bad}])
