"""One end-to-end drill through Ray and MLflow for the hardening promises, shared by its tests (CI time):

a smoke ViT run of 3 epochs whose config holds a secret (in ``tune.space``, which training ignores, so it reaches
the worker through the object store without the model choking on it) while the environment holds another, and whose
epoch 2 gets nothing but NaN losses (``train.inject_nan_steps``). The run must roll back to epoch 1's state with
half the learning rate, finish all 3 epochs, register its model, and record neither secret anywhere.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from mlflow.tracking import MlflowClient

from fovea.config import parse_job_args
from fovea.secrets import MARKER

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-Drill-4711"
ENV_SECRET = "env-s3cr3t-Drill-1234"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def drill(ray_local, tmp_path_factory):
    from fovea.train.trainer import read_state, run_training

    tmp = tmp_path_factory.mktemp("drill")
    uri = f"sqlite:///{tmp / 'mlflow' / 'mlflow.db'}"
    (tmp / "mlflow").mkdir()
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FOVEA_TEST_SECRET_KEY", ENV_SECRET)
        cfg = parse_job_args(
            "train_vit",
            ROOT / "jobs" / "configs" / "vit",
            ["--preset", "smoke", f"tune.space.model.kwargs.api_token={SECRET}", f"track.uri={uri}",
             f"train.storage_path={tmp / 'runs'}", "train.name=drill", "track.experiment=drill", "train.epochs=3",
             "train.torch_threads=1", f"train.inject_nan_steps={list(range(11, 21))}",  # all of epoch 2
             "train.nonfinite_patience=5"],
        )  # fmt: skip
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            summary = run_training(cfg)
    assert cfg.tune.space["model.kwargs.api_token"] == SECRET
    return SimpleNamespace(
        cfg=cfg,
        summary=summary,
        state=read_state(Path(summary.checkpoint_path)),
        client=MlflowClient(uri),
        tmp=tmp,
        printed=printed.getvalue() + summary.describe(),
    )


def _files_holding(root: Path, text: str) -> list[str]:
    needle = text.encode()
    return [str(p.relative_to(root)) for p in sorted(root.rglob("*")) if p.is_file() and needle in p.read_bytes()]


def test_nan_losses_roll_the_run_back_with_a_lower_learning_rate(drill):
    assert drill.summary.epochs == 3
    assert drill.state["lr_scale"] == pytest.approx(0.5) and drill.state["global_step"] == 30  # 10 steps an epoch
    assert [row["epoch"] for row in json.loads(drill.state["history"])] == [1, 2, 3]
    client, run_id = drill.client, drill.summary.mlflow_run_id
    assert client.get_run(run_id).info.status == "FINISHED"

    def points(key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]

    # seen at step 20 (checked every track.log_every_steps = 10 steps): 10 in a row, one rollback to step 10
    assert points("nonfinite_run") == [(20, 10.0)]
    assert points("rollbacks") == [(10, 1.0)] and points("lr_scale") == [(10, 0.5)]
    # every epoch is there; epoch 2 was trained again, cleanly, on the halved schedule
    assert sorted({step for step, _ in points("val_top1")}) == [1, 2, 3]
    assert dict(points("skipped_steps")) == {1: 0.0, 2: 0.0, 3: 0.0}
    lrs = dict(points("lr"))  # the last value logged per epoch: epoch 3 ends the (halved) cosine at its floor
    assert lrs[3] == pytest.approx(0.5 * drill.cfg.optim.min_lr, rel=0.05)


def test_a_run_with_secrets_in_its_config_and_environment_records_none(drill):
    client, run_id = drill.client, drill.summary.mlflow_run_id
    assert client.get_run(run_id).data.params["tune.space"] == str({"model.kwargs.api_token": MARKER})
    stored = client.download_artifacts(run_id, "config.yaml", str(drill.tmp / "downloads"))
    assert yaml.safe_load(Path(stored).read_text())["tune"]["space"] == {"model.kwargs.api_token": MARKER}
    assert json.loads(drill.state["config"])["tune"]["space"] == {"model.kwargs.api_token": MARKER}
    assert drill.summary.registered_version == "1"
    for root in (drill.tmp / "mlflow", drill.tmp / "runs"):  # the store, its artifacts, every checkpoint
        assert _files_holding(root, "vit_micro_convstem_32")  # the search itself finds what is there
        for value in (SECRET, ENV_SECRET):
            assert _files_holding(root, value) == []
    assert "vit_micro_convstem_32" in drill.printed
    assert SECRET not in drill.printed and ENV_SECRET not in drill.printed
