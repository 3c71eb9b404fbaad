"""Issue 21's acceptance: a folder as the world hands it over (odd formats and pixel modes, damaged, huge and padded
files, links, a FIFO, a name that is not UTF-8, copies across splits) is prepared end to end through Ray by the
pipeline script, every entry accounted for once, and a smoke training run takes the result."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import ROOT, mlflow_store, run_job
from PIL import Image

from fovea.data import load_manifest

pytestmark = pytest.mark.slow

LOOPING_EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n{ } loop\nshowpage\n"


def _encoded(seed: int, fmt: str = "PNG", mode: str = "RGB", size: tuple[int, int] = (24, 20), **save) -> bytes:
    """A distinct small image: its own noise, and a class-free colour."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _sixteen_bit_png(seed: int) -> bytes:
    values = np.random.default_rng(seed).integers(0, 65536, (20, 24), dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    return buffer.getvalue()


def _float_tiff(seed: int) -> bytes:
    values = np.random.default_rng(seed).random((20, 24), dtype=np.float32)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="TIFF")
    return buffer.getvalue()


def _corpus(root: Path) -> tuple[set[str], set[str], set[str]]:
    """Write the corpus; returns (paths that must be prepared, paths that must be rejected, paths deduplicated)."""
    good, bad, copies = set(), set(), set()

    def put(relative: str, data: bytes, into: set[str]) -> Path:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        into.add(str(path))
        return path

    for cls, base in (("ant", 0), ("bee", 100)):
        for i in range(8):
            fmt, ext = (("PNG", "png"), ("JPEG", "jpg"))[i % 2]
            put(f"{cls}/{i}.{ext}", _encoded(base + i, fmt), good)
    # odd but valid: prepared (transparency composited, pixel modes scaled, trailing junk cut, first GIF frame)
    put("ant/alpha.png", _encoded(7, "PNG", "RGBA"), good)
    put("bee/palette.png", _encoded(8, "PNG", "P", transparency=0), good)
    put("ant/grey16.png", _sixteen_bit_png(9), good)
    put("bee/float.tiff", _float_tiff(10), good)
    put("ant/padded.jpg", _encoded(11, "JPEG") + os.urandom(1 << 20), good)
    put("bee/anim.gif", _encoded(12, "GIF", "P"), good)
    put("ant/photo.webp", _encoded(13, "WEBP"), good)
    # bad files: rejected, each once, with a reason
    put("ant/looping.jpg", LOOPING_EPS, bad)
    sparse = put("bee/huge.jpg", b"\xff\xd8\xff\xe0", bad)
    with open(sparse, "r+b") as file:
        file.truncate(2 << 30)  # 2 GiB, sparse: never read whole
    put("ant/notes.png", b"these are not pixels\n" * 20, bad)
    put("bee/cut.jpg", _encoded(14, "JPEG")[:300], bad)
    put("ant/" + os.fsdecode(b"caf\xe9.png"), _encoded(15), bad)
    (root / "bee" / "gone.png").symlink_to("nowhere.png")
    bad.add(str(root / "bee" / "gone.png"))
    (root / "ant" / "loop").symlink_to(root / "ant")
    bad.add(str(root / "ant" / "loop"))
    os.mkfifo(root / "bee" / "pipe.jpg")
    bad.add(str(root / "bee" / "pipe.jpg"))
    # copies: a link to a file in the same class, and the same bytes under another name
    (root / "ant" / "again.png").symlink_to(root / "ant" / "0.png")
    copies.add(str(root / "ant" / "again.png"))
    put("bee/copy.jpg", (root / "bee" / "1.jpg").read_bytes(), copies)
    return good, bad, copies


def _stored(manifest: dict, dataset: Path) -> dict[str, list[str]]:
    return {
        split: [
            path
            for shard in info["shards"]
            for path in pq.read_table(dataset / shard, columns=["path"]).column("path").to_pylist()
        ]
        for split, info in manifest["splits"].items()
    }


def test_a_real_world_folder_is_prepared_once_each_and_trains(tmp_path: Path) -> None:
    root, out = tmp_path / "raw", tmp_path / "prepared"
    good, bad, copies = _corpus(root)
    script = ROOT / "pipelines" / "prepare_images.py"
    done = subprocess.run(
        [sys.executable, str(script), str(root), str(out), "--val-fraction", "0.25", "--num-cpus", "2"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = load_manifest(out)

    rejected = [entry["path"] for entry in manifest["rejected"]]
    assert all(entry["reason"] for entry in manifest["rejected"])
    assert len(rejected) == len(set(rejected))  # each listed once
    shown = {path.replace("\\xe9", "\udce9") for path in rejected}  # the non-UTF-8 name is listed escaped
    assert shown == bad, (shown ^ bad, manifest["rejected"])
    reasons = {Path(entry["path"]).name: entry["reason"] for entry in manifest["rejected"]}
    assert "EPS" in reasons["looping.jpg"] and "dangling" in reasons["gone.png"]

    stored = _stored(manifest, out)
    every = stored["train"] + stored["val"]
    assert len(every) == len(set(every))  # each valid file prepared once
    copied = {entry["path"] for entry in manifest["duplicates"] if entry.get("dropped")}
    assert set(every) == good - (copied - copies) and copied == copies
    digests = {
        split: {hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths} for split, paths in stored.items()
    }
    assert not digests["train"] & digests["val"]  # no content in two splits
    assert manifest["splits"]["val"]["count"] >= 2

    store = mlflow_store(tmp_path / "mlflow")
    trained = run_job(
        "train_vit.py",
        "--preset",
        "smoke",
        f"data.path={out}",
        "data.batch_size=4",
        "train.epochs=1",
        "train.name=corpus-smoke",
        f"train.storage_path={tmp_path / 'runs'}",
        f"track.uri={store}",
        timeout=300,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "val top-1" in trained.stdout
