"""`ray start --head`, then `ray job submit --working-dir . -- python jobs/train_mvit.py --preset smoke`: the job
runs on the cluster, registers its model in MLflow, and the head is always stopped again."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A local Ray head with a job server, stopped whatever happens."""
    import ray

    if ray.is_initialized():  # an in-process Ray from another test module must not hold the CPUs
        ray.shutdown()
    # the head's processes (and the job's `python`) must be this environment's, activated or not
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "RAY_AUTH_MODE": "token", "RAY_DISABLE_USAGE_STATS": "1"}
    port, dashboard = _free_port(), _free_port()
    start = [RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=true"]
    start += [f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1", "--disable-usage-stats"]
    try:
        subprocess.run(start, env=env, check=True, capture_output=True, text=True, timeout=180)
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_submitted_smoke_job_trains_and_registers(ray_head, tmp_path):
    address, env = ray_head
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runtime_env = '{"env_vars": {"FOVEA_HOME": "%s", "RAY_DISABLE_USAGE_STATS": "1"}}' % (tmp_path / "home")
    submit = [RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT)]
    submit += ["--runtime-env-json", runtime_env, "--", sys.executable, "jobs/train_mvit.py", "--preset", "smoke"]
    submit += [f"track.uri={tracking}", f"train.storage_path={tmp_path / 'runs'}", "train.name=submitted-smoke"]
    result = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "succeeded" in output and "registered     mvit_micro_8x4 version 1" in output, output[-3000:]
    assert (tmp_path / "home" / "datasets").is_dir()  # the demo set was made where the job was told
    # registry_uri too: other tests in this process may have pointed MLflow's global registry elsewhere
    versions = MlflowClient(tracking, registry_uri=tracking).search_model_versions("name='mvit_micro_8x4'")
    assert [str(version.version) for version in versions] == ["1"]
