"""Scaffolding the tests share: small image folders (learnable, in the formats and sizes users bring), prepared
sets made from them, MLflow stores, job configs and job runs.

fovea and torch are imported where they are used: tests that need neither import this module too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def make_colour_folder(root: Path, per_class: int = 40, seed: int = 0) -> Path:
    """An ImageFolder of 3 colour classes with noise, mixed JPEG/PNG, RGB/RGBA/L... at assorted sizes."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            height, width = int(rng.integers(24, 90)), int(rng.integers(24, 90))
            pixels = np.clip(np.array(colour) + rng.normal(0, 30, (height, width, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            if index % 3 == 0:
                image.save(folder / f"{index:03d}.jpg", quality=90)
            elif index % 3 == 1:
                image.convert("RGBA").save(folder / f"{index:03d}.png")
            else:
                image.save(folder / f"{index:03d}.PNG")
    return root


def prepare_colour_set(base: Path, *, per_class: int, val_fraction: float, shard_rows: int) -> Path:
    """A colour folder at ``base/raw`` prepared with the pipeline into ``base/prepared`` (Ray must be running)."""
    from fovea.data import prepare_images

    raw = make_colour_folder(base / "raw", per_class=per_class)
    prepare_images(raw, base / "prepared", val_fraction=val_fraction, shard_rows=shard_rows)
    return base / "prepared"


def mlflow_store(folder: Path) -> str:
    """The tracking URI of an MLflow sqlite store in ``folder`` (the database is made on first use)."""
    return f"sqlite:///{folder / 'mlflow.db'}"


def smoke_config(job: str, preset_dir: str, *layers: dict[str, Any]) -> Any:
    """``job``'s config as ``--preset smoke`` builds it (from ``jobs/configs/<preset_dir>/smoke.yaml``), with
    ``layers`` on top."""
    from fovea.config import build_config, load_yaml

    return build_config([{"job": job}, load_yaml(ROOT / "jobs" / "configs" / preset_dir / "smoke.yaml"), *layers])


def short_run(dataset: Path, tracking_uri: str, storage: Path, experiment: str) -> dict[str, Any]:
    """The config layer of the end-to-end training runs: 3 epochs of batches of 16 on ``dataset``, tracked."""
    return {
        "data": {"path": str(dataset), "batch_size": 16},
        "train": {"epochs": 3, "storage_path": str(storage)},
        "optim": {"lr": 2e-3, "warmup_epochs": 0.3},
        "track": {"uri": tracking_uri, "experiment": experiment},
    }


def run_job(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python jobs/<script> ARGS`` in a fresh process, its output captured as text."""
    command = [sys.executable, str(ROOT / "jobs" / script), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def logits_in_frame_orders(name: str, num_frames: int, *orders: list[int]) -> list[Any]:
    """A seeded micro video model's logits (5 classes) on 2 random 32x32 clips: as drawn, then with the frames in
    each of ``orders``."""
    import torch

    from fovea.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=5, num_frames=num_frames, img_size=32).eval()
    clips = torch.randn(2, 3, num_frames, 32, 32)
    with torch.no_grad():
        return [model(clips), *(model(clips[:, :, torch.tensor(order)]) for order in orders)]


def check_per_class_records(client: Any, run_id: str, dataset: Path, folder: Path) -> dict[str, Any]:
    """Assert a finished training run's per-class records: ``val_recall/<class>`` and ``val_balanced_acc`` every
    epoch (the balanced accuracy the mean of the recalls), the confusion matrix (PNG + CSV) of the last validation
    summing to its ``val_samples``, ``per_class.csv``, the misclassified gallery when there were mistakes, and the
    dataset as the run's input (digest = manifest hash). Returns ``{"confusion": rows, "epochs": n}``."""
    import csv
    import io

    from fovea.data import load_manifest, manifest_hash

    manifest = load_manifest(dataset)
    classes = manifest["classes"]
    epochs = [m.step for m in client.get_metric_history(run_id, "val_top1")]
    balanced = client.get_metric_history(run_id, "val_balanced_acc")
    assert [m.step for m in balanced] == epochs
    recalls = {name: client.get_metric_history(run_id, f"val_recall/{name}") for name in classes}
    for name, history in recalls.items():
        assert [m.step for m in history] == epochs, name
    last = [history[-1].value for history in recalls.values()]
    assert balanced[-1].value == pytest_approx(sum(last) / len(last))
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"confusion_matrix.png", "confusion_matrix.csv", "per_class.csv"} <= artifacts, artifacts
    local = Path(client.download_artifacts(run_id, "confusion_matrix.csv", str(folder)))
    table = list(csv.reader(io.StringIO(local.read_text())))
    assert table[0][1:] == classes and [row[0] for row in table[1:]] == classes
    confusion = [[int(value) for value in row[1:]] for row in table[1:]]
    assert sum(map(sum, confusion)) == client.get_metric_history(run_id, "val_samples")[-1].value
    for index, name in enumerate(classes):
        row = confusion[index]
        assert recalls[name][-1].value == pytest_approx(100.0 * row[index] / sum(row)), name
    mistakes = sum(map(sum, confusion)) - sum(confusion[i][i] for i in range(len(classes)))
    assert ("misclassified.png" in artifacts) == (mistakes > 0)
    if mistakes:
        gallery = Path(client.download_artifacts(run_id, "misclassified.png", str(folder)))
        assert gallery.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.digest == manifest_hash(dataset)
    tags = {tag.key: tag.value for tag in inputs[0].tags}
    assert tags["mlflow.data.context"] == "training"
    assert tags["fovea.val_rows"] == str(manifest["splits"]["val"]["count"])
    return {"confusion": confusion, "epochs": len(epochs)}


def pytest_approx(value: float) -> Any:
    import pytest

    return pytest.approx(value, abs=1e-6)
