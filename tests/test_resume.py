"""Acceptance: a run killed after epoch 2 and rerun with the same command resumes at epoch 3, same MLflow run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _start(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    # its own session, so killing the group also takes down the Ray instance the job started
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def test_killed_run_resumes_from_epoch_3(tmp_path):
    env = {**os.environ, "FOVEA_HOME": str(tmp_path / "home"), "RAY_DISABLE_USAGE_STATS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [
        sys.executable,
        str(ROOT / "jobs" / "train_vit.py"),
        "--preset",
        "smoke",
        "train.name=resume-me",
        "train.epochs=4",
        "scaling.cpus_per_worker=1",
    ]
    first = _start(command, env, tmp_path)
    seen: list[str] = []
    deadline = time.time() + 420
    assert first.stdout is not None
    for line in first.stdout:
        seen.append(line)
        if "epoch 2/4" in line:  # printed after the epoch's checkpoint is persisted
            os.killpg(first.pid, signal.SIGKILL)
            break
        assert time.time() < deadline, "first run never reached epoch 2:\n" + "".join(seen[-30:])
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, "".join(seen[-30:])
    assert not any("epoch 3/4" in line for line in seen)

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-4000:]
    assert "resuming resume-me from its checkpoint: epoch 3" in output
    assert "epoch 3/4" in output and "epoch 4/4" in output
    assert "epoch 1/4" not in output and "epoch 2/4" not in output

    # one continuous MLflow run (the default store: mlflow.db in the working directory) with all four epochs
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("fovea").experiment_id], "tags.`fovea.train_name` = 'resume-me'"
    )
    assert len(runs) == 1
    assert runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_top1")] == [1, 2, 3, 4]
