"""The README's distillation flow on Ray, small: a CNN teacher is trained and registered with the champion alias,
then a distillation-token DeiT learns from ``models:/teacher@champion``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_colour_folder
from mlflow.tracking import MlflowClient

from fovea.config import build_config, load_yaml
from fovea.data import prepare_images
from fovea.train.trainer import run_training

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(ray_local, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("distill_data")
    make_colour_folder(base / "raw", per_class=40)
    prepare_images(base / "raw", base / "prepared", val_fraction=0.25, shard_rows=32)
    return base / "prepared"


def _config(job: str, preset_dir: str, dataset: Path, uri: str, storage: Path, **sections):
    return build_config(
        [
            {"job": job},
            load_yaml(ROOT / "jobs" / "configs" / preset_dir / "smoke.yaml"),
            {
                "data": {"path": str(dataset), "batch_size": 16},
                "train": {"epochs": 3, "storage_path": str(storage)},
                "optim": {"lr": 2e-3, "warmup_epochs": 0.3},
                "track": {"uri": uri, "experiment": "distill-e2e"},
            },
            sections,
        ]
    )


def test_cnn_teacher_from_the_registry_teaches_a_deit_student(dataset, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    teacher = run_training(
        _config(
            "train_vit",
            "vit",
            dataset,
            uri,
            tmp_path,
            model={"name": "resnet10t"},  # a timm CNN: no img_size argument, any input size
            train={"name": "teacher", "epochs": 3},
            track={"registered_model_name": "teacher"},  # its first version takes @champion (track.promote)
        )
    )
    assert teacher.registered_version == "1"
    client = MlflowClient(uri)
    assert str(client.get_model_version_by_alias("teacher", "champion").version) == "1"

    student = run_training(
        _config(
            "train_deit",
            "deit",
            dataset,
            uri,
            tmp_path,
            train={"name": "student", "epochs": 2},
            distill={"type": "hard", "alpha": 0.5, "teacher": "models:/teacher@champion"},
        )
    )
    assert student.epochs == 2 and student.val_top1 >= 60.0, student
    run = client.get_run(student.mlflow_run_id)
    assert run.data.params["distill.type"] == "hard"
    assert run.data.params["distill.teacher"] == "models:/teacher@champion"
    assert run.data.tags["fovea.teacher"] == "models:/teacher@champion (version 1)"
    # the teacher is scored once on the same val split: its registered weights and normalisation arrived intact
    teacher_score = client.get_metric_history(run.info.run_id, "teacher_val_top1")
    assert [m.step for m in teacher_score] == [0]
    assert teacher_score[0].value == pytest.approx(teacher.val_top1)
    for key in ("val_top1", "val_top1_cls", "val_top1_dist"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    version = client.get_model_version("deit_micro_distilled_convstem_32", student.registered_version)
    assert version.tags["val_top1"] == f"{student.val_top1:.2f}"


def test_a_missing_registry_teacher_is_a_one_line_error_before_training(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / "train_deit.py"),
            "--preset",
            "smoke",
            "distill.type=soft",
            "distill.teacher=models:/nobody@champion",
            f"track.uri={uri}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert job.returncode == 2, job.stderr[-2000:]
    assert (
        job.stderr.strip()
        .splitlines()[-1]
        .startswith("train_deit: config error: distill.teacher: models:/nobody@champion not found in the registry")
    )
    assert "Started a local Ray instance" not in job.stdout + job.stderr  # it failed before Ray started
