"""The cluster recipes parse and carry what Ray's cluster launcher and the KubeRay CRDs (ray.io/v1, KubeRay v1.6)
require, agree with each other (image, Ray version, auth), and point at jobs and config keys that exist."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml

from fovea.config import ConfigError, build_config, parse_override, set_path
from fovea.secrets import is_secret_name

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
IMAGE = "REGISTRY/fovea:0.1.0"


def parse_overrides(texts: list[str]) -> dict:
    """``key.path=value`` words as a config layer, as the jobs read them."""
    layer: dict = {}
    for text in texts:
        set_path(layer, *parse_override(text))
    return layer


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_launcher_configs_pass_rays_own_schema(cloud):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / f"{cloud}.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` does before it touches the cloud
    assert config["provider"]["type"] == cloud and config["docker"]["image"] == IMAGE
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # no training or decoding on the head
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU")}
    assert {t["resources"]["GPU"] for t in gpu_types.values()} == {8} and len(gpu_types) >= 2
    for node_type in gpu_types.values():
        accelerator = [key for key in node_type["resources"] if key.startswith("accelerator_type:")]
        assert accelerator and node_type["resources"][accelerator[0]] == 8
        assert 0 == node_type["min_workers"] < node_type["max_workers"] <= config["max_workers"]  # autoscaled
    head_start = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert "RAY_AUTH_MODE=token" in " ".join(config["worker_start_ray_commands"])
    # `ray start` with RAY_AUTH_MODE=token needs the token on every node, the one the client has
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    assert f"startswith('{'.'.join(ray.__version__.split('.')[:2])}')" in " ".join(config["setup_commands"])


def _ray_cluster_spec_problems(spec: dict) -> list[str]:
    """What KubeRay's RayCluster spec needs that this one lacks."""
    problems = []
    if spec.get("rayVersion") != ray.__version__:
        problems.append(f"rayVersion {spec.get('rayVersion')} is not the installed Ray {ray.__version__}")
    if spec.get("authOptions", {}).get("mode") != "token":
        problems.append("token auth is off")
    head = spec["headGroupSpec"]
    groups = [("head", head), *((g["groupName"], g) for g in spec["workerGroupSpecs"])]
    for name, group in groups:
        if "rayStartParams" not in group:
            problems.append(f"{name}: rayStartParams is required")
        pod = group["template"]["spec"]
        if pod["containers"][0]["image"] != IMAGE:
            problems.append(f"{name}: image {pod['containers'][0]['image']}")
        volumes = {volume["name"] for volume in pod.get("volumes", [])}
        for container in pod["containers"]:
            resources = container["resources"]
            if resources["requests"] != resources["limits"]:
                problems.append(f"{name}: requests differ from limits (Ray reads its resources from limits)")
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    problems.append(f"{name}: volume {mount['name']} is mounted but not defined")
    for group in spec["workerGroupSpecs"]:
        if not group.get("minReplicas", 0) <= group["replicas"] <= group["maxReplicas"]:
            problems.append(f"{group['groupName']}: replicas outside [minReplicas, maxReplicas]")
        pod = group["template"]["spec"]
        if pod["containers"][0]["resources"]["limits"].get("nvidia.com/gpu") and not any(
            t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])
        ):
            problems.append(f"{group['groupName']}: GPU pods without a toleration for GPU nodes' taint")
    return problems


def test_kuberay_raycluster():
    docs = _documents(CLUSTER / "kuberay" / "raycluster.yaml")
    [cluster] = [d for d in docs if d["kind"] == "RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    assert _ray_cluster_spec_problems(cluster["spec"]) == []
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    [claim] = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every pod writes checkpoints there
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for g in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
        for v in g["template"]["spec"].get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    assert claims == {claim["metadata"]["name"]}


def test_kuberay_rayjob_runs_a_real_job_with_valid_settings():
    [job] = _documents(CLUSTER / "kuberay" / "rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert _ray_cluster_spec_problems(spec["rayClusterSpec"]) == []
    assert spec["shutdownAfterJobFinishes"] is True and spec["submissionMode"] == "K8sJobMode"
    assert "MLFLOW_TRACKING_URI" in yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    # the entrypoint is a fovea job in the image (the repository at /home/ray/fovea) with overrides it accepts
    words = spec["entrypoint"].split()
    assert words[0] == "python" and words[1].startswith("/home/ray/fovea/")
    script = ROOT / words[1].removeprefix("/home/ray/fovea/")
    assert script.is_file(), script
    cfg = build_config([{"job": script.stem}, parse_overrides(words[2:])])
    workers = sum(g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
                  for g in spec["rayClusterSpec"]["workerGroupSpecs"])  # fmt: skip
    assert cfg.scaling.use_gpu and cfg.scaling.num_workers == workers  # one Train worker per GPU in the pods
    assert cfg.train.max_failures >= 1 and cfg.train.storage_path.startswith("s3://")


def test_mlflow_deployment_and_service_fit_together():
    deployment, service = _documents(CLUSTER / "kuberay" / "mlflow.yaml")
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels and service["spec"]["selector"] == labels
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    defined = {env["name"] for env in container["env"]}
    used = set(re.findall(r"\$\((\w+)\)", " ".join(container["args"])))
    assert used <= defined and "BACKEND_URI" in used
    port = container["ports"][0]["containerPort"]
    assert service["spec"]["ports"][0]["targetPort"] == port and f"--port={port}" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    # the Ray pods log to this Service
    cluster = next(d for d in _documents(CLUSTER / "kuberay" / "raycluster.yaml") if d["kind"] == "RayCluster")
    head_env = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "MLFLOW_TRACKING_URI", "value": f"http://{service['metadata']['name']}:{port}"} in head_env


def test_dockerfile_builds_the_image_the_configs_use():
    text = (CLUSTER / "docker" / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.MULTILINE).group(1)
    assert base.startswith(f"rayproject/ray:{ray.__version__}-py311")  # the cluster's Ray is the client's Ray
    assert 'pip install --no-cache-dir -e ".[auth]"' in text and "psycopg2" in text and "boto3" in text
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    assert IMAGE.endswith(f":{version}") and f"-t {IMAGE}" in text


def test_job_upload_leaves_data_stores_and_checkpoints_behind(tmp_path):
    from ray._private.runtime_env.packaging import create_package

    runtime_env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    excludes = runtime_env["excludes"]
    assert {".git", ".venv", "mlflow.db", "mlruns", "datasets"} <= set(excludes)
    # a working tree with what a user leaves lying around, next to the source
    for junk in ("mlflow.db", "mlruns/1/meta.yaml", "datasets/demo/train/part-0.parquet", "runs/x/checkpoint.pt"):
        (tmp_path / "tree" / junk).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "tree" / junk).write_bytes(b"x" * 1000)
    (tmp_path / "tree" / "jobs").mkdir()
    (tmp_path / "tree" / "jobs" / "train_mvit.py").write_text("print('hi')\n")
    package = tmp_path / "package.zip"
    create_package(str(tmp_path / "tree"), package, include_gitignore=True, excludes=excludes)
    import zipfile

    names = zipfile.ZipFile(package).namelist()
    assert [n for n in names if not n.endswith("/")] == ["jobs/train_mvit.py"], names
    # and the repository itself, as `ray job submit --working-dir .` packs it: far below Ray's upload limit
    create_package(str(ROOT), tmp_path / "repo.zip", include_gitignore=True, excludes=excludes)
    packed = set(zipfile.ZipFile(tmp_path / "repo.zip").namelist())
    assert {"jobs/train_mvit.py", "platform/fovea/__init__.py", "jobs/configs/mvit/smoke.yaml"} <= packed
    assert not any(name.startswith((".git/", ".venv/")) for name in packed)
    assert (tmp_path / "repo.zip").stat().st_size < 5 * 2**20  # about 1 MB; Ray refuses packages of 512 MiB


def test_no_recipe_puts_a_secret_in_the_runtime_env():
    # a job's runtime env is shown in Ray's dashboard and `ray job list`: credentials go in the nodes' environment
    runtime_envs = [yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())]
    runtime_envs.append(yaml.safe_load(_documents(CLUSTER / "kuberay" / "rayjob.yaml")[0]["spec"]["runtimeEnvYAML"]))
    names = [name for env in runtime_envs for name in env["env_vars"]]
    assert "RAY_DEDUP_LOGS" in names and [name for name in names if is_secret_name(name)] == []


def test_the_local_cluster_makes_a_private_token_and_never_prints_it(tmp_path):
    env = {
        **os.environ,
        "HOME": str(tmp_path),  # no ~/.ray/auth_token yet: `ray start --head` with RAY_AUTH_MODE=token would fail
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    done = subprocess.run(["bash", str(CLUSTER / "local_cluster.sh"), "token"], env=env, capture_output=True,
                          text=True, timeout=120, check=True)  # fmt: skip
    token_file = tmp_path / ".ray" / "auth_token"
    token = token_file.read_text().strip()
    assert len(token) >= 32 and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert done.stdout == f"Ray auth token: {token_file}\n" and token not in done.stderr
    again = subprocess.run(["bash", str(CLUSTER / "local_cluster.sh"), "token"], env=env, capture_output=True,
                           text=True, timeout=120, check=True)  # fmt: skip
    assert token_file.read_text().strip() == token and token not in again.stdout + again.stderr  # kept as it was


FAKE_MLFLOW = """#!/usr/bin/env python3
# stands in for `mlflow server`: records how it was started, answers /health
import http.server, json, os, sys
args = sys.argv[1:]
record = {"argv": args, "backend": os.environ.get("MLFLOW_BACKEND_STORE_URI")}
with open(os.environ["FAKE_MLFLOW_RECORD"], "w") as out:
    json.dump(record, out)
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
host, port = args[args.index("--host") + 1], int(args[args.index("--port") + 1])
http.server.HTTPServer((host, port), Health).serve_forever()
"""


def test_the_tracking_server_script_keeps_the_database_password_out_of_sight(tmp_path):
    import json
    import socket

    fake = tmp_path / "bin" / "mlflow"
    fake.parent.mkdir()
    fake.write_text(FAKE_MLFLOW)
    fake.chmod(0o755)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = "postgresql://mlflow:Db-pa55-77@db.internal:5432/mlflow"
    env = {
        **os.environ,
        "PATH": f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "FOVEA_MLFLOW_DIR": str(tmp_path / "server"),
        "MLFLOW_PORT": str(port),
        "MLFLOW_BACKEND_STORE_URI": backend,
        "FAKE_MLFLOW_RECORD": str(tmp_path / "record.json"),
    }
    env.pop("MLFLOW_HOST", None)
    script = str(CLUSTER / "mlflow_server.sh")
    try:
        started = subprocess.run(["bash", script, "start"], env=env, capture_output=True, text=True, timeout=60)
        status = subprocess.run(["bash", script, "status"], env=env, capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run(["bash", script, "stop"], env=env, capture_output=True, timeout=60)
    assert started.returncode == 0, started.stderr
    assert "backend postgresql://***@db.internal:5432/mlflow" in started.stdout
    assert "backend postgresql://***@db.internal:5432/mlflow" in status.stdout
    assert "pa55" not in started.stdout + started.stderr + status.stdout + status.stderr
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["backend"] == backend  # the server gets it from its environment,
    assert "pa55" not in " ".join(record["argv"])  # not on a command line `ps` shows to everyone
    assert record["argv"][record["argv"].index("--host") + 1] == "127.0.0.1"  # loopback unless MLFLOW_HOST says
    assert stat.S_IMODE((tmp_path / "server").stat().st_mode) == 0o700


def test_a_bad_override_in_a_recipe_would_be_caught():
    with pytest.raises(ConfigError, match="scaling.num_worker"):
        build_config([{"job": "train_mvit"}, parse_overrides(["scaling.num_worker=2"])])
