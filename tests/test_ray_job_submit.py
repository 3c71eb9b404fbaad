"""The cluster path on one machine: `ray start --head`, a tracking server from `cluster/mlflow_server.sh`, and
`ray job submit --working-dir . -- python jobs/train_mvit.py --preset smoke` logging to it. The server is killed
(SIGKILL, a crash) in the middle of the run and started again: training goes on, every epoch's metrics reach the
server, and the model is registered there. The head and the server are always stopped again."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
SERVER_SCRIPT = ROOT / "cluster" / "mlflow_server.sh"
EPOCH_LINE = re.compile(r"\bepoch (\d+)/2 \|")  # the smoke preset's two epochs, as the worker prints them


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environment() -> dict[str, str]:
    # the head's processes, the server and the job's `python` must be this environment's, activated or not
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "RAY_AUTH_MODE": "token", "RAY_DISABLE_USAGE_STATS": "1"}


@pytest.fixture
def ray_head():
    """A local Ray head with a job server, stopped whatever happens."""
    import ray

    if ray.is_initialized():  # an in-process Ray from another test module must not hold the CPUs
        ray.shutdown()
    env = _environment()
    port, dashboard = _free_port(), _free_port()
    start = [RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=true"]
    start += [f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1", "--disable-usage-stats"]
    try:
        subprocess.run(start, env=env, check=True, capture_output=True, text=True, timeout=180)
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.fixture
def tracking_server(tmp_path):
    """`cluster/mlflow_server.sh start` on a free loopback port (SQLite backend, served artifacts), stopped after."""
    port = _free_port()
    env = {**_environment(), "FOVEA_MLFLOW_DIR": str(tmp_path / "server"), "MLFLOW_PORT": str(port)}
    env["MLFLOW_WORKERS"] = "1"

    def script(command: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(SERVER_SCRIPT), command], env=env, capture_output=True, text=True, timeout=120)

    started = script("start")
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in started.stdout
    try:
        yield SimpleNamespace(uri=f"http://127.0.0.1:{port}", script=script, pidfile=tmp_path / "server" / "server.pid")
    finally:
        script("stop")


def test_submitted_job_outlives_a_tracking_server_crash_and_registers(ray_head, tracking_server, tmp_path):
    address, env = ray_head
    server = tracking_server
    runtime_env = '{"env_vars": {"FOVEA_HOME": "%s", "RAY_DISABLE_USAGE_STATS": "1"}}' % (tmp_path / "home")
    submit = [RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT)]
    submit += ["--runtime-env-json", runtime_env, "--", sys.executable, "jobs/train_mvit.py", "--preset", "smoke"]
    submit += [f"track.uri={server.uri}", f"train.storage_path={tmp_path / 'runs'}", "train.name=submitted-smoke"]
    submit += ["track.flush_interval_s=1", "track.log_every_steps=1"]
    job = subprocess.Popen(submit, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    killed = restarted = False
    try:
        for line in job.stdout:
            lines.append(line)
            progress = EPOCH_LINE.search(line)
            if progress and int(progress.group(1)) == 1 and not killed:
                os.killpg(int(server.pidfile.read_text()), signal.SIGKILL)  # the whole server, mid-run
                assert server.script("status").returncode != 0
                killed = True
            elif killed and not restarted and "MLflow tracking store unreachable" in line:
                started = server.script("start")  # the same database: the run is still there
                assert started.returncode == 0, started.stdout + started.stderr
                restarted = True
        code = job.wait(timeout=900)
    finally:
        if job.poll() is None:
            job.kill()
    output = "".join(lines)
    assert code == 0 and killed and restarted, output[-4000:]
    assert "succeeded" in output and "registered     mvit_micro_8x4 version 1" in output, output[-3000:]
    assert "MLflow tracking store reachable again" in output or "held metrics" in output, output[-3000:]
    assert (tmp_path / "home" / "datasets").is_dir()  # the demo set was made where the job was told

    client = MlflowClient(server.uri, registry_uri=server.uri)
    [run] = client.search_runs(
        [client.get_experiment_by_name("fovea").experiment_id],
        filter_string="tags.`fovea.train_name` = 'submitted-smoke'",
    )
    assert run.info.status == "FINISHED"
    for metric in ("val_top1", "val_loss", "train_loss", "val_mv_top1"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, metric))
        assert steps == ([1, 2] if metric != "val_mv_top1" else [2]), (metric, steps)  # every epoch, once
    step_losses = sorted(m.step for m in client.get_metric_history(run.info.run_id, "step/train_loss"))
    assert step_losses == list(range(1, step_losses[-1] + 1)), step_losses  # no step lost in the outage
    assert "training_curves.png" in [a.path for a in client.list_artifacts(run.info.run_id)]
    version = client.get_model_version_by_alias("mvit_micro_8x4", "champion")
    assert version.run_id == run.info.run_id and version.version == "1"
    for tag in ("manifest_hash", "gmacs", "git_commit", "recipe_hash", "val_top1", "val_mv_top1", "num_frames"):
        assert version.tags.get(tag), tag
