"""Numeric faults end to end: a run of NaN losses mid-run rolls the run back to its last good epoch with a lower
learning rate, and every event lands in MLflow; running out of rollbacks stops the run in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fovea.config import build_config, load_yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_nan_losses_roll_the_run_back_with_a_lower_learning_rate(ray_local, tmp_path):
    from fovea.train.trainer import read_state, run_training

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    smoke = load_yaml(ROOT / "jobs" / "configs" / "vit" / "smoke.yaml")  # 320 images, batch 32: 10 steps an epoch
    cfg = build_config(
        [
            {"job": "train_vit"},
            smoke,
            {
                "train": {
                    "epochs": 3,
                    "name": "nan-drill",
                    "storage_path": str(tmp_path / "runs"),
                    "torch_threads": 1,
                    "inject_nan_steps": list(range(11, 21)),  # all of epoch 2
                    "nonfinite_patience": 5,
                },
                "track": {"uri": uri, "log_model": False},
            },
        ]
    )
    summary = run_training(cfg)
    assert summary.epochs == 3
    state = read_state(summary.checkpoint_path)
    assert state["lr_scale"] == pytest.approx(0.5) and state["global_step"] == 30
    assert [row["epoch"] for row in json.loads(state["history"])] == [1, 2, 3]

    client = MlflowClient(uri)
    run = client.get_run(summary.mlflow_run_id)
    assert run.info.status == "FINISHED"
    history = {
        key: client.get_metric_history(run.info.run_id, key) for key in ("nonfinite_run", "rollbacks", "lr_scale")
    }
    # seen at step 20 (checked every track.log_every_steps = 10 steps): 10 in a row, one rollback to step 10
    assert [(m.step, m.value) for m in history["nonfinite_run"]] == [(20, 10.0)]
    assert [(m.step, m.value) for m in history["rollbacks"]] == [(10, 1.0)]
    assert [(m.step, m.value) for m in history["lr_scale"]] == [(10, 0.5)]
    # every epoch is there; epoch 2 trained again, cleanly, at half the learning rate
    val = client.get_metric_history(run.info.run_id, "val_top1")
    assert sorted({m.step for m in val}) == [1, 2, 3]
    skipped = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "skipped_steps")}
    assert skipped == {1: 0.0, 2: 0.0, 3: 0.0}


def test_non_finite_training_stops_the_job_in_one_line():
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    from fovea.train.loop import NonFiniteTraining
    from fovea.train.trainer import checkpoint_failure

    reason = "epoch 2: 5 steps in a row with a non-finite loss or gradient, up to step 15; stopping: x"
    error = WorkerGroupError("failed", {1: UserExceptionWithTraceback(NonFiniteTraining(reason), "traceback")})
    assert checkpoint_failure(error) == f"worker 1: {reason}"


def test_nonfinite_settings_are_checked():
    cfg = build_config([{"train": {"nonfinite_action": "stop", "max_rollbacks": 0, "rollback_lr_factor": 0.1}}])
    assert (cfg.train.nonfinite_action, cfg.train.max_rollbacks, cfg.train.nonfinite_patience) == ("stop", 0, 20)
    for bad in ({"rollback_lr_factor": 1.0}, {"nonfinite_action": "ignore"}, {"nonfinite_patience": -1}):
        with pytest.raises(ValueError, match="train\\."):
            build_config([{"train": bad}])
