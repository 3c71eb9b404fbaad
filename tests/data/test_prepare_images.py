"""Preparing image datasets: scanning sources, checking files, Parquet shards, the manifest and the script."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fovea.data import ensure_demo_images, load_manifest, prepare_images, scan_source, write_manifest
from fovea.data.check import check_image, read_and_check_images
from fovea.data.demo import DEMO_CLASSES
from fovea.data.prepare import run_preparation
from fovea.data.write import CheckProgress, check_labels, script_console
from fovea.paths import fovea_home

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "pipelines" / "prepare_images.py"


def _image_bytes(size: tuple[int, int], mode: str, fmt: str, seed: int = 0) -> bytes:
    """A noisy image of ``size`` (width, height) in ``mode``, encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if mode == "P":
        image = image.quantize(16)
    elif mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


@pytest.fixture()
def raw_folder(tmp_path: Path) -> tuple[Path, set[str]]:
    """Three classes of good JPEG/PNG files in several sizes and modes, plus three bad files and a hidden one."""
    root = tmp_path / "raw"
    good = {
        "ant/a0.jpg": ((40, 30), "RGB", "JPEG"),
        "ant/a1.png": ((20, 25), "RGBA", "PNG"),
        "ant/a2.png": ((33, 17), "L", "PNG"),
        "ant/nested/a3.jpg": ((50, 50), "RGB", "JPEG"),
        "bee/b0.png": ((24, 24), "P", "PNG"),
        "bee/b1.jpg": ((30, 40), "L", "JPEG"),
        "bee/b2.jpg": ((64, 48), "RGB", "JPEG"),
        "cat/c0.jpg": ((16, 16), "RGB", "JPEG"),
        "cat/c1.png": ((21, 13), "RGB", "PNG"),
        "cat/c2.jpg": ((70, 35), "RGB", "JPEG"),
    }
    for seed, (name, (size, mode, fmt)) in enumerate(good.items()):
        _write(root / name, _image_bytes(size, mode, fmt, seed))
    jpeg = _image_bytes((80, 60), "RGB", "JPEG", seed=99)
    bad = {
        _write(root / "ant" / "truncated.jpg", jpeg[: len(jpeg) // 2]),
        _write(root / "bee" / "empty.jpg", b""),
        _write(root / "cat" / "notes.jpg", b"this is a text file, not a picture\n"),
    }
    _write(root / "cat" / ".DS_Store", b"\x00\x01")
    return root, bad


# --------------------------------------------------------------------------------------------------------------------
# The script (run first, before this module's Ray instance starts, so two Ray instances never share 2 CPUs)
# --------------------------------------------------------------------------------------------------------------------


def _run_script(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_script_missing_src_fails_fast_with_one_line(tmp_path: Path) -> None:
    start = time.perf_counter()
    result = _run_script(str(tmp_path / "nope"), str(tmp_path / "out"), timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "SRC not found" in result.stderr and "nope" in result.stderr
    assert time.perf_counter() - start < 10
    assert not (tmp_path / "out").exists()


# A line of Ray's own (its logging format, Ray Data's operator and progress lines, the driver's start-up lines).
RAY_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\s|streaming_executor|logging_progress|execution finished|"
    r"Started a local Ray instance|Token authentication|Running Dataset|core_worker"
)


def test_script_prepares_and_reports_rejected(raw_folder: tuple[Path, set[str]], tmp_path: Path) -> None:
    """Issue 23: by default only fovea's lines (Ray's session folder named once), a progress line with the counts of
    files checked and rejected, then the summary."""
    root, bad = raw_folder
    out = tmp_path / "prepared"
    result = _run_script(str(root), str(out), "--num-cpus", "1", "--shard-rows", "4", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (result.stdout + result.stderr).splitlines()
    assert [line for line in lines if RAY_LINE.search(line)] == []
    assert len(lines) <= 20, lines
    assert sum(line.startswith("Ray's own logs: ") for line in lines) == 1
    assert re.search(r"^checking \[[#.]{20}\] \d+/13 image files \| .* files/s \| [0-3] rejected", result.stdout, re.M)
    assert re.search(r"^checked 13 image files in \d+\.\d s: 3 rejected$", result.stdout, re.M)
    assert "rejected: 3" in result.stdout
    for path in bad:
        assert path in result.stdout
    assert load_manifest(out)["classes"] == ["ant", "bee", "cat"]

    again = _run_script(str(root), str(out), "--num-cpus", "1", timeout=30)
    assert again.returncode == 2
    assert "already holds a prepared dataset" in again.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stopped_preparation_is_one_line_and_leaves_nothing(tmp_path: Path, signum: int) -> None:
    """Ctrl-C while the checks run in Ray: Python's own handler's KeyboardInterrupt was swallowed inside ``ray.get``
    and the script ran to its end, exit 0. Now: one line, exit 130 (143 for SIGTERM), no OUT, no temporary folder."""
    source = tmp_path / "src"
    rng = np.random.default_rng(0)
    for label in ("ant", "bee"):
        (source / label).mkdir(parents=True)
        for index in range(400):  # enough to still be checking when the signal comes
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(source / label / f"{index}.png")
    out = tmp_path / "prepared"
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    command = [sys.executable, str(SCRIPT), str(source), str(out), "--num-cpus", "1", "--shard-rows", "50"]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("Ray's own logs: "):  # Ray is up: the checks are next
                time.sleep(0.5)
                proc.send_signal(signum)
                break
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, stdout[-2000:] + stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == f"prepare_images: stopped by {name}: OUT was not written (its " \
        "temporary folder is removed): rerun the command"  # fmt: skip
    assert "Traceback" not in stderr and "prepared 800 images" not in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # neither OUT nor its temporary folder


def test_check_progress_counts_blocks_and_draws_the_renderer_line() -> None:
    """The counts the preparation's progress line shows: plain lines at most every ``every_s``, then a summary."""
    from fovea.console import ProgressRenderer, progress_text

    now = [0.0]
    out = io.StringIO()
    renderer = ProgressRenderer(out, live=False, every_s=30, clock=lambda: now[0])
    progress = CheckProgress(10, "image", renderer, clock=lambda: now[0])
    assert progress_text(progress.info()) == "checking [....................] 0/10 image files | 0 rejected"
    for seconds, errors in ((2.0, ["", "bad", ""]), (10.0, ["", ""]), (40.0, ["x", "", "", "", ""])):
        now[0] = seconds
        progress.add(pa.table({"row_id": list(range(len(errors))), "error": errors}))
    assert (progress.checked, progress.rejected) == (10, 2)
    assert out.getvalue().splitlines() == [
        "checking [######..............] 3/10 image files | 1.50 files/s | 1 rejected | ETA 5 s",
        "checking [####################] 10/10 image files | 0.25 files/s | 2 rejected",
    ]
    assert progress.summary() == "checked 10 image files in 40.0 s: 2 rejected"


def test_script_console_sets_verbose_for_the_run_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from fovea.console import VERBOSE_ENV, active_console, verbose_wanted

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    with script_console(True):
        assert verbose_wanted() and active_console().verbose
    assert active_console() is None and VERBOSE_ENV not in os.environ
    with script_console(False):
        assert not active_console().verbose
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_images_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.parse_args(["src", "out", "--verbose"]).verbose and not module.parse_args(["src", "out"]).verbose


# --------------------------------------------------------------------------------------------------------------------
# Checking single files (no Ray)
# --------------------------------------------------------------------------------------------------------------------


def test_check_image_accepts_good_and_names_bad_files() -> None:
    png = _image_bytes((30, 20), "RGBA", "PNG")
    data, width, height, error = check_image(png)
    assert (data, width, height, error) == (png, 30, 20, "")

    jpeg = _image_bytes((80, 60), "RGB", "JPEG")
    assert check_image(b"")[3] == "empty file"
    assert check_image(b"hello")[3] == "not an image: cannot identify image file"
    assert check_image(jpeg[: len(jpeg) // 2])[3].startswith("truncated or corrupt image: ")


def test_check_image_shrinks_large_images_to_rgb_jpeg() -> None:
    for mode in ("RGBA", "P", "L", "RGB"):
        data, width, height, error = check_image(_image_bytes((120, 60), mode, "PNG"), max_side=40, jpeg_quality=80)
        assert error == ""
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG"
            assert image.size == (width, height) == (40, 20)
            assert image.mode in ("RGB", "L")
    small = _image_bytes((30, 20), "RGBA", "PNG")
    assert check_image(small, max_side=40)[0] == small


def test_read_and_check_images_without_ray(raw_folder: tuple[Path, set[str]]) -> None:
    root, bad = raw_folder
    paths = sorted(str(p) for p in root.rglob("*.*") if not p.name.startswith(".")) + [str(root / "missing.jpg")]
    batch = {
        "path": paths,
        "label": [0] * len(paths),
        "class_name": ["ant"] * len(paths),
        "split": ["train"] * len(paths),
    }
    table = read_and_check_images(batch)
    assert table.num_rows == len(paths)
    errors = dict(zip(table["path"].to_pylist(), table["error"].to_pylist(), strict=True))
    assert {path for path, error in errors.items() if error} == bad | {str(root / "missing.jpg")}
    assert errors[str(root / "missing.jpg")].startswith("unreadable file: ")


# --------------------------------------------------------------------------------------------------------------------
# Scanning sources (no Ray)
# --------------------------------------------------------------------------------------------------------------------


def _touch_tree(root: Path, counts: dict[str, int], prefix: str = "") -> None:
    for class_name, count in counts.items():
        for index in range(count):
            _write(root / prefix / class_name / f"{index:03d}.jpg", b"x")


def test_scan_class_folders_makes_a_seeded_stratified_val_split(tmp_path: Path) -> None:
    _touch_tree(tmp_path, {"dog": 20, "cat": 10, "emu": 2, "owl": 1})
    items, classes = scan_source(tmp_path, val_fraction=0.2, seed=3)
    assert classes == ["cat", "dog", "emu", "owl"]
    val = {}
    for item in items:
        assert Path(item["path"]).is_absolute()
        assert classes[item["label"]] == item["class_name"]
        val.setdefault(item["class_name"], []).append(item["split"] == "val")
    assert {name: sum(flags) for name, flags in val.items()} == {"dog": 4, "cat": 2, "emu": 1, "owl": 0}

    assert scan_source(tmp_path, val_fraction=0.2, seed=3)[0] == items
    other = scan_source(tmp_path, val_fraction=0.2, seed=4)[0]
    assert {i["path"] for i in other if i["split"] == "val"} != {i["path"] for i in items if i["split"] == "val"}
    assert all(item["split"] == "train" for item in scan_source(tmp_path, val_fraction=0.0)[0])


def test_scan_train_val_layout_keeps_given_splits(tmp_path: Path) -> None:
    _touch_tree(tmp_path, {"cat": 3, "dog": 2}, prefix="train")
    _touch_tree(tmp_path, {"cat": 1, "fox": 1}, prefix="validation")
    items, classes = scan_source(tmp_path, val_fraction=0.5)
    assert classes == ["cat", "dog", "fox"]
    relative = {
        split: [Path(i["path"]).relative_to(tmp_path).as_posix() for i in items if i["split"] == split]
        for split in ("train", "val")
    }
    assert relative["train"] == [f"train/{name}/{i:03d}.jpg" for name, n in (("cat", 3), ("dog", 2)) for i in range(n)]
    assert relative["val"] == ["validation/cat/000.jpg", "validation/fox/000.jpg"]


def test_scan_csv_and_json_lists(tmp_path: Path) -> None:
    _touch_tree(tmp_path / "imgs", {"a": 4, "b": 4})
    rows = [{"path": f"imgs/{c}/{i:03d}.jpg", "label": c} for c in "ab" for i in range(4)]
    with open(tmp_path / "list.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["path", "label"])
        writer.writeheader()
        writer.writerows(rows)
    items, classes = scan_source(tmp_path / "list.csv", val_fraction=0.25)
    assert classes == ["a", "b"] and len(items) == 8
    assert {i["path"] for i in items} == {str(tmp_path / r["path"]) for r in rows}
    assert sum(i["split"] == "val" for i in items) == 2

    splits = ["train", "val", "validation", "train"] * 2
    (tmp_path / "list.json").write_text(
        json.dumps([{**row, "split": split} for row, split in zip(rows, splits, strict=True)])
    )
    items, _ = scan_source(tmp_path / "list.json")
    assert [i["split"] for i in items].count("val") == 4

    numeric = [{"path": f"imgs/a/{i:03d}.jpg", "label": label} for i, label in enumerate([10, 2, 2, 10])]
    (tmp_path / "numeric.json").write_text(json.dumps(numeric))
    assert scan_source(tmp_path / "numeric.json")[1] == ["2", "10"]


def _bad_source(root: Path, case: str) -> Path:
    """A source that scan_source must refuse, for each kind of mistake."""
    if case == "missing":
        return root / "missing"
    if case == "flat":
        _write(root / "flat" / "x.jpg", b"x")
        return root / "flat"
    if case == "empty":
        (root / "empty" / "cls").mkdir(parents=True)
        return root / "empty"
    if case == "csv_columns":
        _write(root / "l.csv", b"file,class\nx.jpg,a\n")
        return root / "l.csv"
    _write(root / "s.csv", b"path,label,split\nx.jpg,a,test\n")
    return root / "s.csv"


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        ("missing", FileNotFoundError, "SRC not found"),
        ("flat", ValueError, "no class subfolders"),
        ("empty", ValueError, "no files found"),
        ("csv_columns", ValueError, "lacks column"),
        ("csv_split", ValueError, "unknown split 'test'"),
    ],
)
def test_scan_errors_are_one_line(tmp_path: Path, case: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message) as caught:
        scan_source(_bad_source(tmp_path, case))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"class_name": "zebra"}, "has label 'zebra', which is not one of the classes: ant, bee, cat"),
        ({"label": 2}, "has label number 2 for class 'bee', which is number 1"),
    ],
)
def test_a_label_outside_the_class_list_stops_before_any_shard(
    raw_folder: tuple[Path, set[str]], tmp_path: Path, change: dict, says: str
) -> None:
    """A caller that brings its own class list (run_preparation) cannot write shards whose labels it lacks."""
    root, _ = raw_folder
    items, classes = scan_source(root, val_fraction=0.0)
    bee = next(index for index, item in enumerate(items) if item["class_name"] == "bee")
    items[bee] = {**items[bee], **change}
    out = tmp_path / "out"
    with pytest.raises(ValueError) as caught:
        run_preparation(
            root, out, items, classes, kind="image", check=read_and_check_images, check_kwargs={}, options={},
            shard_rows=10, seed=0, overwrite=False, num_cpus=1,
        )  # fmt: skip
    assert str(caught.value) == f"{items[bee]['path']} (in {root}) {says}"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["raw"]  # no OUT, no temporary folder
    with pytest.raises(ValueError, match="names 'ant' twice"):
        check_labels(items[:1], ["ant", "bee", "ant"], root)


def test_existing_manifest_is_refused_before_any_work(raw_folder: tuple[Path, set[str]], tmp_path: Path) -> None:
    root, _ = raw_folder
    out = tmp_path / "out"
    write_manifest(out, {"classes": [], "splits": {}})
    with pytest.raises(FileExistsError, match="already holds a prepared dataset"):
        prepare_images(root, out)
    _write(tmp_path / "junk" / "file.txt", b"x")
    with pytest.raises(FileExistsError, match="refusing"):
        prepare_images(root, tmp_path / "junk", overwrite=True)


def test_load_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no manifest.json in"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"classes": []}')
    with pytest.raises(ValueError, match="missing 'splits'"):
        load_manifest(tmp_path)
    write_manifest(tmp_path, {"classes": ["a"], "splits": {"train": {"count": 1, "shards": ["train/p.parquet"]}}})
    assert load_manifest(tmp_path / "manifest.json")["splits"]["train"]["shards"] == [str(tmp_path / "train/p.parquet")]


# --------------------------------------------------------------------------------------------------------------------
# The Ray Data job
# --------------------------------------------------------------------------------------------------------------------

EXPECTED_SCHEMA = {
    "image": pa.binary(),
    "label": pa.int64(),
    "class_name": pa.string(),
    "path": pa.string(),
    "width": pa.int32(),
    "height": pa.int32(),
}


def _read_split(manifest: dict, split: str) -> pa.Table:
    tables = [pq.read_table(shard) for shard in manifest["splits"][split]["shards"]]
    for table in tables:
        assert {field.name: field.type for field in table.schema} == EXPECTED_SCHEMA
    return pa.concat_tables(tables)


def test_prepare_images_end_to_end(ray_local, raw_folder: tuple[Path, set[str]], tmp_path: Path) -> None:
    root, bad = raw_folder
    out = tmp_path / "prepared"
    manifest = prepare_images(root, out, val_fraction=0.34, seed=1, shard_rows=3)

    assert manifest == load_manifest(out)
    assert manifest["format"] == "fovea-dataset/1" and manifest["kind"] == "image"
    assert manifest["classes"] == ["ant", "bee", "cat"]
    assert manifest["source"] == str(root)
    assert {entry["path"] for entry in manifest["rejected"]} == bad
    reasons = {Path(entry["path"]).name: entry["reason"] for entry in manifest["rejected"]}
    assert reasons["empty.jpg"] == "empty file"
    assert reasons["notes.jpg"] == "not an image: cannot identify image file"
    assert reasons["truncated.jpg"].startswith("truncated or corrupt image: ")

    splits = manifest["splits"]
    assert splits["train"]["count"] + splits["val"]["count"] == 10
    for split in splits.values():
        assert split["count"] == sum(split["class_counts"].values())
    totals = {
        name: splits["train"]["class_counts"][name] + splits["val"]["class_counts"][name]
        for name in manifest["classes"]
    }
    assert totals == {"ant": 4, "bee": 3, "cat": 3}
    assert splits["val"]["count"] >= 1
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["splits"]["train"]["shards"][0] == "train/part-00000.parquet"
    assert not list(tmp_path.glob("prepared.tmp-*"))

    seen = set()
    for split, info in splits.items():
        assert len(info["shards"]) == -(-info["count"] // 3)
        table = _read_split(manifest, split)
        assert table.num_rows == info["count"]
        for row in table.to_pylist():
            seen.add(row["path"])
            assert manifest["classes"][row["label"]] == row["class_name"]
            with Image.open(io.BytesIO(row["image"])) as image:
                assert image.size == (row["width"], row["height"])
            assert row["image"] == Path(row["path"]).read_bytes()  # no max_side: original bytes kept
    assert len(seen) == 10 and not seen & bad


def test_shard_rows_max_side_and_overwrite(ray_local, raw_folder: tuple[Path, set[str]], tmp_path: Path) -> None:
    root, _ = raw_folder
    out = tmp_path / "prepared"
    first = prepare_images(root, out, val_fraction=0.0, shard_rows=100)
    assert len(first["splits"]["train"]["shards"]) == 1 and first["splits"]["val"] == {
        "count": 0,
        "shards": [],
        "class_counts": {"ant": 0, "bee": 0, "cat": 0},
    }

    second = prepare_images(root, out, val_fraction=0.0, shard_rows=2, max_side=32, jpeg_quality=85, overwrite=True)
    assert len(second["splits"]["train"]["shards"]) == 5
    assert second["options"]["max_side"] == 32
    rows = {row["path"]: row for row in _read_split(second, "train").to_pylist()}
    assert len(rows) == 10
    for path, row in rows.items():
        with Image.open(path) as original:
            large = max(original.size) > 32
        with Image.open(io.BytesIO(row["image"])) as stored:
            assert stored.size == (row["width"], row["height"])
            if large:
                assert stored.format == "JPEG" and max(stored.size) == 32
            else:
                assert row["image"] == Path(path).read_bytes()
    assert not any(p.name.startswith("prepared.") for p in tmp_path.iterdir())


# Here rather than in test_demo_data.py so it reuses this module's Ray instance (starting Ray costs ~10 s).
def test_ensure_demo_images_prepares_once(ray_local, capsys: pytest.CaptureFixture[str]) -> None:
    prepared = ensure_demo_images(size=16, train_per_class=3, val_per_class=1, seed=2)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"making the demo image set (32 images) in {prepared.parent} ..."
    assert re.fullmatch(rf"made the demo image set in \d+\.\d s: {re.escape(str(prepared))}", printed[-1])
    assert prepared == fovea_home() / "datasets" / "demo-images-s16-n3-1-seed2" / "prepared"
    manifest = load_manifest(prepared)
    assert manifest["classes"] == sorted(DEMO_CLASSES)
    assert manifest["splits"]["train"]["count"] == 24 and manifest["splits"]["val"]["count"] == 8
    assert manifest["rejected"] == []

    assert ensure_demo_images(size=16, train_per_class=3, val_per_class=1, seed=2) == prepared
    assert capsys.readouterr().out == ""


def test_links_fifos_odd_names_and_copies_are_all_accounted_for(
    ray_local, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21: nothing under SRC vanishes, a link loop adds nothing, and a val image byte-identical to a train image
    is kept in train only (--dedup=split); the script ends with one summary line per category."""
    import importlib.util

    root = tmp_path / "raw"
    for seed, name in enumerate(("train/ant/a0.png", "train/ant/a1.png", "train/bee/b0.png", "train/bee/b1.png")):
        _write(root / name, _image_bytes((20, 16), "RGB", "PNG", seed))
    _write(root / "val" / "ant" / "a2.png", _image_bytes((20, 16), "RGB", "PNG", seed=10))
    _write(root / "val" / "bee" / "b2.png", _image_bytes((20, 16), "RGB", "PNG", seed=11))
    _write(root / "val" / "bee" / "copy.png", (root / "train" / "bee" / "b0.png").read_bytes())
    (root / "val" / "ant" / "a0-link.png").symlink_to(root / "train" / "ant" / "a0.png")
    (root / "train" / "ant" / "gone.jpg").symlink_to("nowhere.jpg")
    (root / "train" / "ant" / "again").symlink_to(root / "train")
    os.mkfifo(root / "train" / "bee" / "pipe.png")
    _write(root / "train" / "bee" / os.fsdecode(b"caf\xe9.png"), _image_bytes((20, 16), "RGB", "PNG", seed=12))
    _write(root / "test" / "ant" / "t.png", b"x")
    _write(root / "val" / "bee" / ".thumb.png", b"x")

    spec = importlib.util.spec_from_file_location("prepare_images_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "prepared"
    assert module.main([str(root), str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()

    manifest = load_manifest(out)
    assert manifest["options"]["dedup"] == "split"
    assert {name: split["count"] for name, split in manifest["splits"].items()} == {"train": 4, "val": 2}
    stored = {row["path"] for split in ("train", "val") for row in _read_split(manifest, split).to_pylist()}
    assert stored == {str(root / name) for name in ("train/ant/a0.png", "train/ant/a1.png", "train/bee/b0.png")} | {
        str(root / name) for name in ("train/bee/b1.png", "val/ant/a2.png", "val/bee/b2.png")
    }
    assert {Path(entry["path"]).name: entry["reason"].split(":")[0] for entry in manifest["rejected"]} == {
        "gone.jpg": "dangling symbolic link",
        "again": "symbolic link loop",
        "pipe.png": "not a regular file (FIFO)",
        "caf\\xe9.png": "name is not valid UTF-8",
    }
    assert {Path(entry["path"]).name: entry["kept"] for entry in manifest["duplicates"]} == {
        "a0-link.png": str(root / "train" / "ant" / "a0.png"),
        "copy.png": str(root / "train" / "bee" / "b0.png"),
    }
    assert all(entry["dropped"] for entry in manifest["duplicates"])
    assert {Path(entry["path"]).name for entry in manifest["ignored"]} == {"test", ".thumb.png"}
    assert manifest["accounting"]["prepared"] == 6 and sum(manifest["accounting"]["rejected"].values()) == 4
    assert printed[-5:] == [
        "prepared 6 images: 4 train, 2 val",
        "rejected 4 files (1 dangling symbolic link, 1 name is not valid UTF-8, 1 not a regular file, "
        "1 symbolic link loop)",
        "ignored 2 entries (1 hidden, 1 not a split folder)",
        "deduplicated 1 paths to files or folders already listed (1 same file (a symbolic or hard link to a file "
        "kept under another path))",
        "warning: 1 files have the same contents as another file: 1 in train and val: kept in train only "
        "(--dedup=split)",
    ]


def test_exotic_huge_and_padded_files_and_the_recorded_settings(ray_local, tmp_path: Path) -> None:
    """Issue 21: an EPS named .jpg and a 2 GiB file are rejected unread, trailing data is cut (and noted), a large
    image is shrunk to the default max_side, and the manifest records the settings; the script has the flags."""
    import importlib.util

    root = tmp_path / "raw"
    jpeg = _image_bytes((40, 30), "RGB", "JPEG", seed=1)
    _write(root / "ant" / "a0.jpg", _image_bytes((20, 16), "RGB", "JPEG", seed=0))
    _write(root / "ant" / "padded.jpg", jpeg + bytes(2**20))
    _write(root / "ant" / "poster.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    _write(root / "bee" / "wide.png", _image_bytes((3000, 20), "RGB", "PNG", seed=2))
    with open(root / "bee" / "huge.jpg", "wb") as file:
        file.write(jpeg)
        file.truncate(2 * 2**30)
    out = tmp_path / "prepared"
    manifest = prepare_images(root, out, val_fraction=0.0, max_file_mb=16)

    assert {key: manifest["options"][key] for key in ("max_side", "max_file_mb", "formats", "max_pixels")} == {
        "max_side": 2048,
        "max_file_mb": 16,
        "formats": ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"],
        "max_pixels": 178956970,
    }
    assert {Path(entry["path"]).name: entry["reason"] for entry in manifest["rejected"]} == {
        "poster.jpg": "unsupported image format EPS (fovea reads JPEG, PNG, WebP, GIF, BMP, TIFF)",
        "huge.jpg": "file too large: 2048.0 MB, over max_file_mb=16",
    }
    assert manifest["notes"] == [
        {"path": str(root / "ant" / "padded.jpg"), "note": "dropped 1.0 MB after the end of the image"}
    ]
    rows = {Path(row["path"]).name: row for row in _read_split(manifest, "train").to_pylist()}
    assert rows["padded.jpg"]["image"] == jpeg
    assert (rows["wide.png"]["width"], rows["wide.png"]["height"]) == (2048, 14)

    spec = importlib.util.spec_from_file_location("prepare_images_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = module.parse_args(["src", "out"])
    assert (args.max_side, args.max_file_mb) == (2048, 64.0)
    assert module.parse_args(["src", "out", "--max-file-mb", "8", "--max-side", "0"]).max_file_mb == 8.0
