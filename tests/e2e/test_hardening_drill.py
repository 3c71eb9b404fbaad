"""One end-to-end drill through Ray and MLflow for the hardening promises, shared by its tests (CI time):

a smoke ViT run of 3 epochs on a small prepared image set in which, after preparation, one train shard was deleted
and another damaged inside (``data.max_bad_shards=2``); its config holds a secret (in ``tune.space``, which training
ignores, so it reaches the worker through the object store without the model choking on it) while the environment
holds another; and the first 3 steps of epoch 2 get NaN losses (``train.inject_nan_steps``,
``train.nonfinite_patience=3``). The run must drop and count the bad shards, roll back to epoch 1's state with half
the learning rate, finish all 3 epochs, register its model, and record neither secret anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import yaml
from helpers import mlflow_store, prepare_colour_set
from mlflow.tracking import MlflowClient

from fovea.config import parse_job_args
from fovea.secrets import MARKER

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-Drill-4711"
ENV_SECRET = "env-s3cr3t-Drill-1234"
BATCH = 8

pytestmark = pytest.mark.slow


def _rows(shard: str) -> int:
    return pq.ParquetFile(shard).metadata.num_rows


@pytest.fixture(scope="module")
def drill(ray_local, tmp_path_factory):
    from fovea.data import load_manifest
    from fovea.train.trainer import read_state, run_training

    tmp = tmp_path_factory.mktemp("drill")
    prepared = prepare_colour_set(tmp, per_class=40, val_fraction=0.25, shard_rows=6)
    shards = load_manifest(prepared)["splits"]["train"]["shards"]
    gone, damaged = shards[1], shards[0]
    rows = {shard: _rows(shard) for shard in shards}
    images = Counter(
        hashlib.sha256(i).hexdigest() for i in pq.read_table(damaged, columns=["image"])["image"].to_pylist()
    )
    assert sum(images.values()) == rows[damaged]
    Path(gone).unlink()
    data = bytearray(Path(damaged).read_bytes())
    data[4:68] = b"\xff" * 64  # the first page header: the footer still reads, the data does not
    Path(damaged).write_bytes(bytes(data))
    read = sum(count for shard, count in rows.items() if shard not in (gone, damaged))
    steps = read // BATCH  # optimizer steps an epoch (one worker, drop_last)

    uri = mlflow_store(tmp / "mlflow")
    (tmp / "mlflow").mkdir()
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FOVEA_TEST_SECRET_KEY", ENV_SECRET)
        cfg = parse_job_args(
            "train_vit",
            ROOT / "jobs" / "configs" / "vit",
            ["--preset", "smoke", f"tune.space.model.kwargs.api_token={SECRET}", f"track.uri={uri}",
             f"data.path={prepared}", f"data.batch_size={BATCH}", "data.max_bad_shards=2",
             f"train.storage_path={tmp / 'runs'}", "train.name=drill", "track.experiment=drill", "train.epochs=3",
             "train.torch_threads=1", f"train.inject_nan_steps={[steps + 1, steps + 2, steps + 3]}",
             "train.nonfinite_patience=3", "track.log_every_steps=1"],
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
        gone=gone,
        damaged=damaged,
        rows=rows,
        read=read,
        steps=steps,
    )


def _points(drill, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in drill.client.get_metric_history(drill.summary.mlflow_run_id, key)]


def _files_holding(root: Path, text: str) -> list[str]:
    needle = text.encode()
    return [str(p.relative_to(root)) for p in sorted(root.rglob("*")) if p.is_file() and needle in p.read_bytes()]


def test_bad_shards_are_dropped_or_skipped_within_the_budget_and_counted(drill):
    warnings = [line for line in drill.printed.splitlines() if line.startswith("warning: train split")]
    assert len(warnings) == 1 and f"{drill.gone} (no such file)" in warnings[0], warnings
    run = drill.client.get_run(drill.summary.mlflow_run_id)
    assert run.info.status == "FINISHED" and drill.summary.epochs == 3
    tags = run.data.tags
    assert tags["fovea.data_skipped_shards"] == "1"
    assert tags["fovea.data_skipped_rows"] == str(drill.rows[drill.gone])
    assert tags["fovea.data_skipped"] == f"train: {drill.gone} (no such file)"
    # one worker: every row it was given; the damaged shard is skipped (and counted) in every epoch
    assert _points(drill, "train_rows") == [(epoch, drill.read) for epoch in (1, 2, 3)]
    assert _points(drill, "data_missing_rows") == [(epoch, drill.rows[drill.damaged]) for epoch in (1, 2, 3)]


def test_nan_losses_roll_the_run_back_with_a_lower_learning_rate(drill):
    steps = drill.steps
    assert drill.state["lr_scale"] == pytest.approx(0.5) and drill.state["global_step"] == 3 * steps
    assert [row["epoch"] for row in json.loads(drill.state["history"])] == [1, 2, 3]
    # seen at the third NaN step of epoch 2 (track.log_every_steps=1): 3 in a row, one rollback to epoch 1's end
    assert _points(drill, "nonfinite_run") == [(steps + 3, 3.0)]
    assert _points(drill, "rollbacks") == [(steps, 1.0)] and _points(drill, "lr_scale") == [(steps, 0.5)]
    # every epoch is there once; epoch 2 was trained again, cleanly (each injected fault fires once)
    assert [step for step, _ in _points(drill, "val_top1")] == [1, 2, 3]
    assert dict(_points(drill, "skipped_steps")) == {1: 0.0, 2: 0.0, 3: 0.0}
    # the per-step learning rate of epoch 2's first step: logged by the aborted attempt, then by the retrained one
    history = drill.client.get_metric_history(drill.summary.mlflow_run_id, "step/lr")
    first, retrained = [m.value for m in sorted(history, key=lambda m: m.timestamp) if m.step == steps + 1]
    assert retrained == pytest.approx(0.5 * first, rel=1e-6)


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
