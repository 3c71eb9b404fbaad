"""Acceptance for the local multi-node cluster: `cluster/local_cluster.sh start --workers 2` (a head, two worker
nodes, a tracking server), then `ray job submit --runtime-env cluster/runtime_env.yaml -- python jobs/train_mvit.py
--preset smoke` with two training workers spread over the worker nodes. The tracking server is killed (SIGKILL, a
crash) after epoch 1 and started again: training goes on, and the job succeeds with every epoch's metrics, every
step's loss and the registered model in the server. The cluster is stopped at the end whatever happens."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
SCRIPT = ROOT / "cluster" / "local_cluster.sh"
SERVER_SCRIPT = ROOT / "cluster" / "mlflow_server.sh"
EPOCH_LINE = re.compile(r"\bepoch (\d+)/2 \|")  # the smoke preset's two epochs, as the worker prints them


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def cluster(tmp_path):
    import ray

    if ray.is_initialized():  # an in-process Ray from another test module must not hold the CPUs
        ray.shutdown()
    ports = {name: _free_port() for name in ("RAY_PORT", "DASHBOARD_PORT", "MLFLOW_PORT")}
    env = {
        **os.environ,
        **{name: str(port) for name, port in ports.items()},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "FOVEA_MLFLOW_DIR": str(tmp_path / "mlflow"),
        "MLFLOW_WORKERS": "1",
        "RAY_AUTH_MODE": "token",  # the client sends the token the head wrote to ~/.ray/auth_token
        "RAY_DISABLE_USAGE_STATS": "1",
        "HEAD_CPUS": "0",  # the driver only: the two training workers must go to the worker nodes
        "WORKER_CPUS": "2",  # one for a training worker, one for its decoding tasks
    }
    try:
        started = subprocess.run([str(SCRIPT), "start", "--workers", "2"], env=env, capture_output=True, text=True,
                                 timeout=300)  # fmt: skip
        assert started.returncode == 0, started.stdout + started.stderr
        yield env, ports
    finally:
        stopped = subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=180)
        assert "local cluster stopped" in stopped.stdout
        assert subprocess.run(["pgrep", "-f", "ray/raylet/raylet"], capture_output=True).returncode == 1


def _node_names(env: dict[str, str], dashboard: str) -> dict[str, str]:
    """Node id -> the local cluster's name for it (its ``node:<name>`` resource)."""
    listed = subprocess.run([RAY, "list", "nodes", "--address", dashboard, "--format", "json", "--detail"], env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    names = {}
    for node in json.loads(listed.stdout):
        custom = [key[5:] for key in node["resources_total"] if key.startswith("node:") and not key[5].isdigit()]
        names[node["node_id"]] = next((name for name in custom if not name.startswith("__")), "?")
    return names


def _server(env: dict[str, str], command: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SERVER_SCRIPT), command], env=env, capture_output=True, text=True, timeout=120)


def test_smoke_mvit_on_two_worker_nodes_outlives_a_tracking_server_crash(cluster, tmp_path):
    env, ports = cluster
    dashboard = f"http://127.0.0.1:{ports['DASHBOARD_PORT']}"
    tracking = f"http://127.0.0.1:{ports['MLFLOW_PORT']}"
    runtime_env = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    runtime_env["env_vars"].update(FOVEA_HOME=str(tmp_path / "home"), MLFLOW_TRACKING_URI=tracking)
    (tmp_path / "runtime_env.yaml").write_text(yaml.safe_dump(runtime_env))
    submit = [RAY, "job", "submit", "--address", dashboard, "--working-dir", str(ROOT)]
    submit += ["--runtime-env", str(tmp_path / "runtime_env.yaml"), "--", "python", "jobs/train_mvit.py"]
    submit += ["--preset", "smoke", "scaling.num_workers=2", "scaling.placement_strategy=STRICT_SPREAD"]
    submit += [f"train.storage_path={tmp_path / 'shared' / 'runs'}", "train.name=two-nodes"]
    submit += ["track.flush_interval_s=1", "track.log_every_steps=1"]
    job = subprocess.Popen(submit, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    killed = restarted = False
    try:
        for line in job.stdout:
            lines.append(line)
            progress = EPOCH_LINE.search(line)
            if progress and int(progress.group(1)) == 1 and not killed:
                pid = int((tmp_path / "mlflow" / "server.pid").read_text())
                os.killpg(pid, signal.SIGKILL)  # the whole server, mid-run
                assert _server(env, "status").returncode != 0
                killed = True
            elif killed and not restarted and "MLflow tracking store unreachable" in line:
                started = _server(env, "start")  # the same database: the run is still there
                assert started.returncode == 0, started.stdout + started.stderr
                restarted = True
        code = job.wait(timeout=900)
    finally:
        if job.poll() is None:
            job.kill()
    output = "".join(lines)
    assert code == 0 and "succeeded" in output and killed and restarted, output[-4000:]
    assert "registered     mvit_micro_8x4 version 1" in output and f"({tracking})" in output, output[-3000:]
    assert "MLflow tracking store reachable again" in output, output[-3000:]
    assert (tmp_path / "home" / "datasets").is_dir()  # the demo set was made where the job was told

    # the two training workers ran on the two worker nodes, one each
    placed = dict(re.findall(r"worker (\d)/2 on node (\w+)", output))
    names = _node_names(env, dashboard)
    assert sorted(names.get(node) for node in placed.values()) == ["worker-1", "worker-2"], (placed, names)

    client = MlflowClient(tracking, registry_uri=tracking)
    [run] = client.search_runs(
        [client.get_experiment_by_name("fovea").experiment_id], "tags.`fovea.train_name` = 'two-nodes'"
    )
    assert run.info.status == "FINISHED" and run.data.params["scaling.num_workers"] == "2"
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
    assert any((tmp_path / "shared" / "runs" / "two-nodes").glob("checkpoint_*"))  # the shared storage_path
