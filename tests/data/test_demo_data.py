"""The synthetic demo image set: layout, reproducibility, and that colour alone does not give the class away.

ensure_demo_images (generate + prepare with Ray) is tested in test_prepare_images.py, to share its Ray instance.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fovea.data import make_demo_images
from fovea.data.demo import DEMO_CLASSES, render_demo_image

REPO = Path(__file__).resolve().parents[2]


def _files(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*.jpg"))}


def test_layout_and_real_jpegs(tmp_path: Path) -> None:
    out = make_demo_images(tmp_path / "demo", size=32, train_per_class=3, val_per_class=2, seed=0)
    assert out == tmp_path / "demo"
    assert sorted(p.name for p in out.iterdir()) == ["train", "val"]
    for split, count in (("train", 3), ("val", 2)):
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(DEMO_CLASSES)
        for class_name in DEMO_CLASSES:
            names = sorted(p.name for p in (out / split / class_name).iterdir())
            assert names == [f"{index:05d}.jpg" for index in range(count)]
    for path in out.rglob("*.jpg"):
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.size == (32, 32) and image.mode == "RGB"
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temporary folder left behind

    with pytest.raises(FileExistsError):
        make_demo_images(out, size=32, train_per_class=1, val_per_class=1)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first = _files(make_demo_images(tmp_path / "a", size=32, train_per_class=2, val_per_class=1, seed=5))
    again = _files(make_demo_images(tmp_path / "b", size=32, train_per_class=2, val_per_class=1, seed=5))
    other = _files(make_demo_images(tmp_path / "c", size=32, train_per_class=2, val_per_class=1, seed=6))
    assert first == again
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in first)
    # Images do not depend on how many were generated: the first ones of a bigger set are the same files.
    bigger = _files(make_demo_images(tmp_path / "d", size=32, train_per_class=3, val_per_class=1, seed=5))
    assert all(bigger[name] == data for name, data in first.items())


def test_classes_not_separable_by_mean_colour() -> None:
    """A nearest-class-mean classifier on each image's mean RGB must stay far from solving the task."""
    per_class, size = 40, 32
    features = np.array(
        [
            [
                render_demo_image(name, np.random.default_rng([0, 0, class_id, index]), size).mean(axis=(0, 1))
                for index in range(per_class)
            ]
            for class_id, name in enumerate(DEMO_CLASSES)
        ]
    )  # (classes, per_class, 3)
    train, test = features[:, : per_class // 2], features[:, per_class // 2 :]
    centroids = train.mean(axis=1)  # (classes, 3)
    distances = np.linalg.norm(test[:, :, None, :] - centroids[None, None], axis=-1)  # (classes, n, classes)
    accuracy = (distances.argmin(axis=-1) == np.arange(len(DEMO_CLASSES))[:, None]).mean()
    assert accuracy < 0.35, f"mean-colour accuracy {accuracy:.2f} (chance is {1 / len(DEMO_CLASSES):.2f})"


def test_script_writes_images(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    result = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "make_demo_data.py"), "images", str(out), "--size", "16"]
        + ["--train-per-class", "1", "--val-per-class", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    first, last = result.stdout.splitlines()[:2]
    assert first == f"making 8 train + 8 val images (8 classes, 16x16 JPEG) in {out} ..."  # said before it starts
    assert last.startswith("wrote 8 train + 8 val images (8 classes, 16x16 JPEG) to ")
    assert len(list(out.rglob("*.jpg"))) == 16
