"""Checkpoint and weights files: atomic writes with a checksum, corrupt files refused, a run's corrupt latest
checkpoint giving way to the previous one, a full disk, and pickled objects refused wherever a model is loaded (real
files, a real MLflow registry; no Ray)."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.fs
import pytest
import torch
from helpers import mlflow_store
from mlflow.tracking import MlflowClient

from fovea import checkpoints
from fovea.checkpoints import (
    CheckpointError,
    CheckpointWriteError,
    load_checkpoint,
    load_run_checkpoint,
    save_checkpoint,
)

CLASSES = ["red", "green", "blue"]
MODEL = "vit_nano_patch4_16"


def _state(epoch: int) -> dict:
    return {"model": {"weight": torch.full((8,), float(epoch))}, "epoch": epoch, "history": "[]"}


def _flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _truncate_without_checksum(path: Path) -> None:
    (path.parent / (path.name + ".sha256")).unlink()
    _truncate(path)


def _one_line(err: BaseException) -> str:
    message = str(err)
    assert message and "\n" not in message, message
    return message


# --------------------------------------------------------------------------------------------------------------------
# The format: checkpoint.pt + checkpoint.pt.sha256, verified on load
# --------------------------------------------------------------------------------------------------------------------


def test_a_checkpoint_is_its_file_and_a_sha256sum_checksum(tmp_path):
    path = save_checkpoint(tmp_path, _state(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "checkpoint.pt.sha256"]  # no temp files
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (tmp_path / "checkpoint.pt.sha256").read_text() == f"{digest}  checkpoint.pt\n"
    if shutil.which("sha256sum"):  # the standard tool checks it too
        checked = subprocess.run(["sha256sum", "-c", "checkpoint.pt.sha256"], cwd=tmp_path, capture_output=True)
        assert checked.returncode == 0, checked.stdout
    state = load_checkpoint(tmp_path)
    assert state["epoch"] == 3 and torch.equal(state["model"]["weight"], torch.full((8,), 3.0))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda folder: _flip_byte(folder / "checkpoint.pt"), "checksum mismatch"),
        (lambda folder: _truncate(folder / "checkpoint.pt"), "checksum mismatch"),
        (lambda folder: (folder / "checkpoint.pt.sha256").write_text("not a digest\n"), "not a SHA-256 checksum"),
        (lambda folder: (folder / "checkpoint.pt").unlink(), "no such file"),
        # a checkpoint without a checksum (another tool's, an older fovea's) is still read, and a broken one refused
        (lambda folder: _truncate_without_checksum(folder / "checkpoint.pt"), "unreadable checkpoint"),
    ],
    ids=["flipped-byte", "truncated", "bad-checksum-file", "missing", "truncated-without-checksum"],
)
def test_a_damaged_checkpoint_is_a_one_line_error_naming_the_file(tmp_path, damage, expected):
    save_checkpoint(tmp_path, _state(1))
    damage(tmp_path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path)
    message = _one_line(caught.value)
    assert expected in message and str(tmp_path / "checkpoint.pt") in message, message


def test_a_checkpoint_without_checksum_still_loads(tmp_path):
    torch.save(_state(2), tmp_path / "checkpoint.pt")  # as fovea wrote them before checksums
    assert load_checkpoint(tmp_path)["epoch"] == 2


# --------------------------------------------------------------------------------------------------------------------
# Resume: a run's corrupt latest checkpoint falls back to the newest earlier one that verifies
# --------------------------------------------------------------------------------------------------------------------


def _run_folder(root: Path, epochs: int = 3) -> list[Path]:
    """A run's storage as Ray Train V2 lays it out: ``checkpoint_<timestamp>`` folders and its own files."""
    run = root / "run"
    folders = []
    for epoch in range(1, epochs + 1):
        folder = run / f"checkpoint_2026-11-26_10-00-{epoch:02d}.123456"
        folder.mkdir(parents=True)
        save_checkpoint(folder, _state(epoch))
        folders.append(folder)
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    (run / "checkpoint_tmp_file").write_text("not a folder")
    return folders


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    first, second, latest = _run_folder(tmp_path)
    state, used, warning = load_run_checkpoint(str(latest))
    assert (state["epoch"], used, warning) == (3, str(latest), None)  # a good one: no fallback, no warning

    _flip_byte(latest / "checkpoint.pt")
    # a newer folder Ray never recorded (an upload cut off by a crash) is not taken, even if it reads
    unrecorded = latest.parent / "checkpoint_2026-11-26_10-00-59.000000"
    unrecorded.mkdir()
    save_checkpoint(unrecorded, _state(99))
    state, used, warning = load_run_checkpoint(str(latest))
    assert state["epoch"] == 2 and used == str(second)
    assert torch.equal(state["model"]["weight"], torch.full((8,), 2.0))
    assert _one_line(warning).startswith(f"warning: {latest / 'checkpoint.pt'}: checksum mismatch")
    assert warning.endswith(f"resuming from the newest earlier checkpoint that verifies, {second}")

    _truncate(second / "checkpoint.pt")
    state, used, warning = load_run_checkpoint(str(latest))
    assert state["epoch"] == 1 and used == str(first) and str(latest) in warning

    _flip_byte(first / "checkpoint.pt", offset=0)
    with pytest.raises(CheckpointError) as caught:
        load_run_checkpoint(str(latest))
    message = _one_line(caught.value)
    assert all(str(folder / "checkpoint.pt") in message for folder in (first, second, latest)), message
    assert "no earlier one verifies either" in message


def test_no_fallback_for_a_checkpoint_that_is_not_the_runs_own(tmp_path):
    _, _, latest = _run_folder(tmp_path)
    _flip_byte(latest / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="checksum mismatch") as caught:
        load_run_checkpoint(str(latest), fallback=False)
    assert "earlier" not in str(caught.value)
    lone = tmp_path / "other" / "checkpoint_2026-11-26_09-00-00.000000"
    lone.mkdir(parents=True)
    save_checkpoint(lone, _state(1))
    _truncate(lone / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="the run has no earlier one"):
        load_run_checkpoint(str(lone))


def test_fallback_in_a_remote_filesystem_names_the_remote_files(tmp_path):
    """Storage reached through a pyarrow filesystem (as S3 is): checkpoints are copied to a scratch folder to load,
    and messages name them where they live."""
    _, second, latest = _run_folder(tmp_path)
    _truncate(latest / "checkpoint.pt")
    remote = pyarrow.fs.SubTreeFileSystem(str(tmp_path), pyarrow.fs.LocalFileSystem())
    path = f"run/{latest.name}"
    state, used, warning = load_run_checkpoint(path, remote, scheme="s3://bucket/")
    assert state["epoch"] == 2 and used == f"run/{second.name}"
    assert _one_line(warning).startswith(f"warning: s3://bucket/{path}/checkpoint.pt: checksum mismatch")
    assert warning.endswith(f"verifies, s3://bucket/run/{second.name}")


# --------------------------------------------------------------------------------------------------------------------
# A failed write: one line, and the previous checkpoint stays whole
# --------------------------------------------------------------------------------------------------------------------


def _save_half_then_fill_the_disk(real_save):
    def save(obj, file, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return save


def _open_writes_to_dev_full(real_open):
    """The temporary checkpoint file opens on /dev/full: the kernel's own ENOSPC, through torch's writer."""

    def open_(file, mode="r", *args, **kwargs):
        if "w" in mode and Path(file).name.startswith(".checkpoint.pt."):
            return real_open("/dev/full", mode, *args, **kwargs)
        return real_open(file, mode, *args, **kwargs)

    return open_


@pytest.mark.parametrize("failure", ["torch.save raises", "/dev/full"])
def test_a_failed_write_is_one_line_and_leaves_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    save_checkpoint(tmp_path, _state(1))
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    if failure == "/dev/full":
        if not Path("/dev/full").exists():
            pytest.skip("no /dev/full here")
        monkeypatch.setattr(checkpoints, "open", _open_writes_to_dev_full(open), raising=False)
    else:
        monkeypatch.setattr(torch, "save", _save_half_then_fill_the_disk(torch.save))
    with pytest.raises(CheckpointWriteError) as caught:
        save_checkpoint(tmp_path, _state(2))
    path = tmp_path / "checkpoint.pt"
    assert _one_line(caught.value) == f"could not write checkpoint {path}: No space left on device"
    monkeypatch.undo()
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before  # nothing half-written, no temp
    assert load_checkpoint(tmp_path)["epoch"] == 1


def test_a_checkpoint_failure_on_a_worker_ends_the_job_in_one_line(capsys):
    """What Ray Train hands the driver when a worker's checkpoint write fails (pickled across, as from a worker)
    becomes the job's one-line error, exit code 1."""
    import pickle

    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    from fovea.jobs import RunFailure, run_command
    from fovea.train.checks import checkpoint_failure

    full = CheckpointWriteError("could not write checkpoint /tmp/t/checkpoint.pt: No space left on device")
    failures = {
        1: UserExceptionWithTraceback(RuntimeError("other"), "Traceback ..."),
        0: UserExceptionWithTraceback(full, "Traceback ..."),
    }
    error = pickle.loads(pickle.dumps(WorkerGroupError("Traceback (most recent call last): ...", failures)))
    assert checkpoint_failure(error) == f"worker 0: {full}"
    assert (
        checkpoint_failure(WorkerGroupError("x", {0: UserExceptionWithTraceback(RuntimeError("CUDA"), "tb")})) is None
    )
    assert checkpoint_failure(KeyboardInterrupt()) is None

    def run(cfg):
        raise RunFailure(f"run {cfg.run_name()} stopped: {checkpoint_failure(error)}")

    configs = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "vit"
    argv = ["--preset", "smoke", "train.name=full-disk"]
    assert run_command("train_vit", configs, "", argv, check=lambda cfg: None, run=run) == 1
    assert capsys.readouterr().err == f"train_vit: run full-disk stopped: worker 0: {full}\n"


# --------------------------------------------------------------------------------------------------------------------
# Pickled objects: refused wherever a model is loaded, and never run
# --------------------------------------------------------------------------------------------------------------------


def _explode(marker: str) -> torch.nn.Module:
    Path(marker).write_text("unpickled: arbitrary code ran")
    return torch.nn.Linear(1, 1)


class Bomb:
    """Unpickling this calls ``_explode``, which writes a marker file: proof that the file's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (_explode, (self.marker,))


def test_pickled_objects_are_refused_everywhere_a_file_is_loaded(tmp_path):
    from fovea.distill import load_teacher
    from fovea.models import create_model, load_model_dir
    from fovea.sources import load_model as load_eval_model
    from fovea.weights import read_state_dict

    marker = tmp_path / "exploded"
    run = tmp_path / "run" / "checkpoint_2026-11-26_10-00-01.000000"
    run.mkdir(parents=True)
    checkpoint = save_checkpoint(run, {"model": Bomb(marker), "config": "{}", "classes": CLASSES})  # a valid checksum
    weights = tmp_path / "weights.pt"
    torch.save({"patch_embed.proj.weight": Bomb(marker)}, weights)
    folder = tmp_path / "model_folder"
    folder.mkdir()
    shutil.copy(weights, folder / "weights.pt")
    (folder / "fovea_model.json").write_text(f'{{"model_name": "{MODEL}", "create_kwargs": {{"num_classes": 3}}}}')
    attempts = {
        "resume": lambda: load_run_checkpoint(str(run)),
        "train.read_state": lambda: load_checkpoint(run),
        "distill.teacher=checkpoint": lambda: load_teacher(str(checkpoint), num_classes=0, img_size=16),
        "distill.teacher_checkpoint": lambda: load_teacher(MODEL, num_classes=3, img_size=16, checkpoint=str(weights)),
        "eval.model=checkpoint": lambda: load_eval_model(str(checkpoint), "sqlite:///unused.db"),
        "eval.model=folder": lambda: load_eval_model(str(folder), "sqlite:///unused.db"),
        "model.checkpoint": lambda: create_model(MODEL, num_classes=3, checkpoint=str(weights)),
        "weights file": lambda: read_state_dict(weights),
        "model folder": lambda: load_model_dir(folder),
    }
    for name, attempt in attempts.items():
        with pytest.raises(CheckpointError) as caught:
            attempt()
        message = _one_line(caught.value)
        assert "refused" in message and "never unpickles" in message and "_explode" in message, (name, message)
        assert not marker.exists(), f"{name} ran the file's code"
    torch.load(weights, weights_only=False)  # the bomb is armed: plain unpickling runs it
    assert marker.exists()


def test_registered_models_load_from_their_pickle_free_copy_never_the_pickle(tmp_path, capsys):
    """Versions fovea registers carry weights.pt + fovea_model.json; teacher, evaluation and download read those.
    Each version's pickled MLflow model is replaced by a bomb here: loading it would leave the marker."""
    import mlflow.pytorch

    from fovea.cli import main
    from fovea.distill import load_teacher
    from fovea.models import create_model, load_model_dir
    from fovea.sources import load_model as load_eval_model
    from fovea.track import log_final_model

    uri = mlflow_store(tmp_path)
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("trap", artifact_location=(tmp_path / "artifacts").as_uri())
    torch.manual_seed(0)
    model = create_model(MODEL, num_classes=3, img_size=16).eval()
    example = np.zeros((1, 3, 16, 16), dtype=np.float32)
    metadata = {"model_name": MODEL, "mean": [0.5] * 3, "std": [0.5] * 3}
    for create_kwargs in ({"num_classes": 3, "img_size": 16}, None):  # version 2: no create_kwargs, no plain copy
        log_final_model(
            uri,
            client.create_run(experiment).info.run_id,
            model,
            input_example=example,
            registered_model_name="trap",
            version_tags={},
            classes=CLASSES,
            metadata={**metadata, "create_kwargs": create_kwargs} if create_kwargs else metadata,
        )
    marker = tmp_path / "exploded"
    stored = {}
    for version in ("1", "2"):
        stored[version] = Path(client.get_model_version_download_uri("trap", version).removeprefix("file://"))
        torch.save(Bomb(marker), stored[version] / "data" / "model.pth")
    assert sorted(p.name for p in (stored["1"] / "extra_files").iterdir()) == [
        "fovea_model.json",
        "weights.pt",
        "weights.pt.sha256",
    ]
    assert not (stored["2"] / "extra_files").exists()

    probe = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(probe)
        teacher = load_teacher("models:/trap/1", num_classes=0, img_size=16, tracking_uri=uri)
        assert teacher.classes == CLASSES and teacher.mean == (0.5, 0.5, 0.5)
        assert torch.allclose(teacher.model(probe), expected)
        evaluated = load_eval_model("models:/trap/1", uri)
        assert evaluated.classes == CLASSES and torch.allclose(evaluated.module(probe), expected)
        assert main(["--tracking-uri", uri, "models", "download", "trap/1", str(tmp_path / "dl")]) == 0
        assert torch.allclose(load_model_dir(tmp_path / "dl")[0](probe), expected)
    assert not marker.exists()

    capsys.readouterr()
    refusals = {
        "distill.teacher": lambda: load_teacher("models:/trap/2", num_classes=0, img_size=16, tracking_uri=uri),
        "eval.model": lambda: load_eval_model("models:/trap/2", uri),
    }
    for name, attempt in refusals.items():
        with pytest.raises(ValueError) as caught:
            attempt()
        message = _one_line(caught.value)
        assert "models:/trap/2: version 2 has no pickle-free weights" in message, (name, message)
        assert "never unpickles" in message, (name, message)
    assert main(["--tracking-uri", uri, "models", "download", "trap/2", str(tmp_path / "dl2")]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "has no pickle-free weights" in error
    assert not (tmp_path / "dl2").exists() and not marker.exists()

    _flip_byte(stored["1"] / "extra_files" / "weights.pt")  # a damaged copy is refused, naming it in the registry
    with pytest.raises(ValueError) as caught:
        load_teacher("models:/trap/1", num_classes=0, img_size=16, tracking_uri=uri)
    damaged = "models:/trap/1: models:/trap/1/extra_files/weights.pt: checksum mismatch"
    assert _one_line(caught.value).startswith(damaged)
    assert not marker.exists()

    mlflow.pytorch.load_model("models:/trap/1")  # the bomb is armed: MLflow's own loader unpickles it
    assert marker.exists()


# --------------------------------------------------------------------------------------------------------------------
# Weights files cut short, lying or of random bytes: one line everywhere one is read, before Ray starts
# --------------------------------------------------------------------------------------------------------------------


def _safetensors_with_header(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)
    return path


LYING_HEADER = b'{"patch_embed.proj.weight": {"dtype": "F32", "shape": [64, 64], "data_offsets": [0, 16384]}}'
DAMAGED_WEIGHTS = [
    "safetensors-cut-short",
    "safetensors-cut-in-header",
    "safetensors-lying-header",  # claims more data than the file holds
    "safetensors-huge-header-length",
    "safetensors-header-not-json",
    "safetensors-random-bytes",
    "pth-cut-short",
    "pt-random-bytes",
    "bin-random-bytes",
    "bin-empty",
    "pth-holding-no-tensors",
]


def _damaged_weights(folder: Path, kind: str) -> Path:
    """A weights file gone wrong in the way ``kind`` says, in the format its name says."""
    from safetensors.torch import save_file

    from fovea.models import create_model

    state = create_model(MODEL, num_classes=3).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "whole.safetensors"))
    torch.save(state, folder / "whole.pth")
    whole = {suffix: (folder / f"whole.{suffix}").read_bytes() for suffix in ("safetensors", "pth")}
    path = folder / f"{kind}.{kind.split('-')[0]}"
    data = {
        "safetensors-cut-short": whole["safetensors"][: len(whole["safetensors"]) // 2],
        "safetensors-cut-in-header": whole["safetensors"][:20],
        "pth-cut-short": whole["pth"][: len(whole["pth"]) // 2],
        "bin-empty": b"",
    }.get(kind, np.random.default_rng(0).bytes(4096))
    path.write_bytes(data)
    if kind == "safetensors-lying-header":
        _safetensors_with_header(path, LYING_HEADER, b"\0" * 64)
    elif kind == "safetensors-huge-header-length":
        path.write_bytes((2**62).to_bytes(8, "little") + b"{}")
    elif kind == "safetensors-header-not-json":
        _safetensors_with_header(path, b"not json")
    elif kind == "pth-holding-no-tensors":
        torch.save({"weights": ["not", "tensors"], "epoch": 3}, path)
    return path


def _readers(path: Path) -> dict[str, tuple[object, type]]:
    """Every place a weights file given by a user is read, and the error each one raises."""
    from fovea.config import ConfigError, build_config
    from fovea.models import create_model, load_weights
    from fovea.sources import load_model as load_eval_model
    from fovea.train.checks import check_before_start, load_checked_teacher
    from fovea.weights import read_state_dict

    model = {"name": MODEL, "img_size": 16}
    by_name = {"type": "soft", "teacher": MODEL, "teacher_checkpoint": str(path)}
    return {
        "read_state_dict": (lambda: read_state_dict(path), CheckpointError),
        "load_weights": (lambda: load_weights(create_model(MODEL, num_classes=3), path), ValueError),
        "model.checkpoint": (
            lambda: check_before_start(build_config([{"model": {**model, "checkpoint": str(path)}}])),
            ConfigError,
        ),
        "distill.teacher_checkpoint": (
            lambda: load_checked_teacher(build_config([{"model": model, "distill": by_name}])),
            ConfigError,
        ),
        "distill.teacher=FILE": (
            lambda: load_checked_teacher(
                build_config([{"model": model, "distill": {"type": "soft", "teacher": str(path)}}])
            ),
            ConfigError,
        ),
        "eval.model": (lambda: load_eval_model(str(path), "sqlite:///unused.db"), ValueError),
    }


@pytest.mark.parametrize("kind", DAMAGED_WEIGHTS)
def test_a_damaged_weights_file_is_one_line_everywhere_one_is_read(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    path = _damaged_weights(tmp_path, kind)
    for where, (attempt, error) in _readers(path).items():
        with pytest.raises(error) as caught:
            attempt()
        message = _one_line(caught.value)
        assert str(path) in message, (where, message)
        if where in ("model.checkpoint", "distill.teacher_checkpoint", "distill.teacher=FILE"):
            assert message.startswith(where.split("=")[0] + ": "), (where, message)


def test_weights_that_do_not_fit_the_model_are_refused_before_ray(tmp_path):
    from fovea.config import ConfigError, build_config
    from fovea.models import create_model
    from fovea.train.checks import check_before_start

    other = tmp_path / "other-width.pth"
    torch.save(create_model("vit_micro_patch4_32", num_classes=3).state_dict(), other)
    renamed = tmp_path / "renamed.pth"
    torch.save({f"x.{k}": v for k, v in create_model(MODEL, num_classes=3).state_dict().items()}, renamed)
    fits = tmp_path / "fits.pth"
    torch.save(create_model(MODEL, num_classes=5).state_dict(), fits)  # another head: skipped, as fine-tuning does

    def check(path: Path) -> None:
        check_before_start(build_config([{"model": {"name": MODEL, "img_size": 16, "checkpoint": str(path)}}]))

    for path, expected in ((other, "shapes do not fit"), (renamed, "unexpected x.cls_token")):
        with pytest.raises(ConfigError) as caught:
            check(path)
        message = _one_line(caught.value)
        assert message.startswith(f"model.checkpoint: {path}: ") and expected in message, message
    check(fits)


def test_a_checkpoint_that_lies_about_its_model_is_one_line(tmp_path):
    import json

    from fovea.models import create_model
    from fovea.sources import load_model as load_eval_model

    weights = create_model(MODEL, num_classes=3).state_dict()
    config = json.dumps({"model": {"name": MODEL, "img_size": 16}})
    lies = {
        "other-architecture": {"model": weights, "config": json.dumps({"model": {"name": "vit_micro_patch4_32"}})},
        "config-not-json": {"model": weights, "config": "{not json"},
        "config-a-list": {"model": weights, "config": "[1, 2]"},
        "model-not-a-dict": {"model": [1, 2], "config": config},
        "classes-not-names": {"model": weights, "config": config, "classes": 3},
    }
    for name, state in lies.items():
        folder = tmp_path / name
        folder.mkdir()
        path = save_checkpoint(folder, {"classes": CLASSES, **state})
        with pytest.raises(ValueError) as caught:
            load_eval_model(str(path), "sqlite:///unused.db")
        message = _one_line(caught.value)
        assert message.startswith(f"{path}: ") and "not a usable fovea checkpoint" in message, (name, message)
