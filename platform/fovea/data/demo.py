"""A synthetic image classification set that is quick to make but still needs a model to learn shapes.

Eight classes of shapes (:data:`DEMO_CLASSES`). Every image has a random background colour, a faint random blob,
gaussian and speckle noise, and one object in a random colour that contrasts with the background, at a random
position, size, aspect and rotation. Colours and brightness are drawn the same way for every class, so only the
shape tells the classes apart. Stripes and checkerboards rotate by at most 25 degrees so "horizontal" keeps its
meaning; there is no vertical-stripes class that rotation could turn one into.

Each image is drawn from its own seeded generator, ``np.random.default_rng([seed, split_id, class_id, index])``,
so the set is reproducible and any image can be regenerated alone.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fovea.data.manifest import MANIFEST_NAME
from fovea.paths import fovea_home

DEMO_CLASSES = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "star",
    "horizontal_stripes",
    "checkerboard",
)
_SPLIT_IDS = {"train": 0, "val": 1}
# Shapes are drawn at twice the size and box-filtered down: cheap anti-aliasing, so edges look like photos of
# shapes rather than pixel art, and a model cannot key on aliasing patterns.
_SUPERSAMPLE = 2
# Stripes and checkerboards only tilt this far, so "horizontal" stays horizontal.
_MAX_PATTERN_TILT = np.deg2rad(25.0)
# The object's luma must differ from the background's by at least this much (0-255 scale).
_MIN_LUMA_CONTRAST = 70.0
_LUMA = np.array([0.299, 0.587, 0.114])


def regular_polygon(num_vertices: int, radius: float = 1.0, phase: float = np.pi / 2) -> np.ndarray:
    """Vertices ``(num_vertices, 2)`` of a regular polygon around the origin, the first one at angle ``phase``."""
    angles = phase + 2 * np.pi * np.arange(num_vertices) / num_vertices
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(inner: float) -> np.ndarray:
    """A five-pointed star: outer radius 1, inner radius ``inner``."""
    outer = regular_polygon(5)
    inner_points = regular_polygon(5, inner, phase=np.pi / 2 + np.pi / 5)
    return np.stack([outer, inner_points], axis=1).reshape(10, 2)


def _plus(half_width: float) -> np.ndarray:
    """A plus sign with arms of half-width ``half_width`` reaching radius 1."""
    w = half_width
    return np.array(
        [[w, 1], [w, w], [1, w], [1, -w], [w, -w], [w, -1], [-w, -1], [-w, -w], [-1, -w], [-1, w], [-w, w], [-w, 1]],
        dtype=np.float64,
    )


def _rectangle(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Corners of an axis-aligned rectangle."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _shape_polygons(class_name: str, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The polygons of one object in its own frame (roughly within the unit disk).

    Returns:
        ``(filled, holes)``: polygons painted with the object colour, then polygons cut back out of them.
    """
    if class_name == "circle":
        return [regular_polygon(48, 0.9)], []
    if class_name == "square":
        return [_rectangle(-0.78, -0.78, 0.78, 0.78)], []
    if class_name == "triangle":
        return [regular_polygon(3, 1.1)], []
    if class_name == "cross":
        # thin arms: a fat plus and a five-pointed star are the same blob at 32x32
        return [_plus(rng.uniform(0.16, 0.22))], []
    if class_name == "ring":
        return [regular_polygon(48, 1.0)], [regular_polygon(48, rng.uniform(0.5, 0.65))]
    if class_name == "star":
        return [_star(rng.uniform(0.36, 0.42))], []
    if class_name == "horizontal_stripes":
        # Three bars separated by two gaps of the same height; bands stay >= ~3 px at 32x32 after cropping.
        num_bars = 3
        band = 1.8 / (2 * num_bars - 1)
        return [_rectangle(-0.95, -0.9 + 2 * k * band, 0.95, -0.9 + (2 * k + 1) * band) for k in range(num_bars)], []
    if class_name == "checkerboard":
        cells, half = 4, 0.82
        step = 2 * half / cells
        return [
            _rectangle(-half + i * step, -half + j * step, -half + (i + 1) * step, -half + (j + 1) * step)
            for i in range(cells)
            for j in range(cells)
            if (i + j) % 2 == 0
        ], []
    raise ValueError(f"unknown demo class {class_name!r}; expected one of {', '.join(DEMO_CLASSES)}")


def contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random background colour and a random object colour whose brightness clearly differs from it."""
    background = rng.uniform(0, 255, size=3)
    for _ in range(32):
        colour = rng.uniform(0, 255, size=3)
        if abs(float(_LUMA @ colour) - float(_LUMA @ background)) >= _MIN_LUMA_CONTRAST:
            return background, colour
    # Rare (mid-grey backgrounds): fall back to black or white, whichever is farther in brightness.
    return background, np.full(3, 0.0 if _LUMA @ background > 127.5 else 255.0)


def render_demo_image(class_name: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Draw one demo image.

    Args:
        class_name: One of :data:`DEMO_CLASSES`.
        rng: The image's own generator; the image is a pure function of its state.
        size: Side of the square image in pixels.

    Returns:
        The image, ``(size, size, 3)`` uint8.
    """
    filled, holes = _shape_polygons(class_name, rng)
    background, colour = contrasting_colours(rng)

    # Object placement: radius 24-36% of the side, centre kept so the object stays mostly inside the frame.
    big = size * _SUPERSAMPLE
    radius = big * rng.uniform(0.24, 0.36)
    centre = rng.uniform(radius, big - radius, size=2)
    is_pattern = class_name in ("horizontal_stripes", "checkerboard")
    angle = rng.uniform(-_MAX_PATTERN_TILT, _MAX_PATTERN_TILT) if is_pattern else rng.uniform(0, 2 * np.pi)
    # no aspect stretch: at 32x32 an ellipse and a rotated rectangle become the same blob, blurring the classes
    stretch = np.ones(2)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])

    def to_pixels(polygon: np.ndarray) -> list[tuple[float, float]]:
        points = (polygon * stretch) @ rotation.T * radius + centre  # (V, 2)
        return [tuple(point) for point in points]

    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    for polygon in filled:
        draw.polygon(to_pixels(polygon), fill=255)
    for polygon in holes:
        draw.polygon(to_pixels(polygon), fill=0)
    object_alpha = np.asarray(mask.resize((size, size), Image.Resampling.BOX), dtype=np.float32)[..., None] / 255.0

    # A faint, soft blob anywhere in the frame: clutter the model must learn to ignore.
    blob = Image.new("L", (size, size), 0)
    blob_radius = size * rng.uniform(0.08, 0.2, size=2)
    blob_centre = rng.uniform(0, size, size=2)
    ImageDraw.Draw(blob).ellipse(
        [*(blob_centre - blob_radius), *(blob_centre + blob_radius)], fill=int(255 * rng.uniform(0.15, 0.3))
    )
    blob = blob.filter(ImageFilter.GaussianBlur(size * 0.03))
    blob_alpha = np.asarray(blob, dtype=np.float32)[..., None] / 255.0
    blob_colour = rng.uniform(0, 255, size=3).astype(np.float32)

    image = np.broadcast_to(background.astype(np.float32), (size, size, 3))
    image = image * (1 - blob_alpha) + blob_colour * blob_alpha
    image = image * (1 - object_alpha) + colour.astype(np.float32) * object_alpha
    # Speckle (multiplicative) and gaussian (additive) noise, at random strengths.
    image = image * (1 + rng.normal(0, rng.uniform(0.0, 0.08), size=image.shape).astype(np.float32))
    image = image + rng.normal(0, rng.uniform(2.0, 10.0), size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_demo_images(
    out: str | Path, *, size: int = 64, train_per_class: int = 500, val_per_class: int = 100, seed: int = 0
) -> Path:
    """Write the demo set as JPEG files ``out/<split>/<class>/<index:05d>.jpg``.

    The files are written to a temporary sibling folder that is renamed to ``out`` at the end, so an interrupted
    run never leaves a partial set that looks complete.

    Args:
        out: Output folder; must not exist or be empty.
        size: Image side in pixels.
        train_per_class: Training images per class.
        val_per_class: Validation images per class.
        seed: Seed of the whole set.

    Returns:
        ``out`` as an absolute path.

    Raises:
        FileExistsError: ``out`` exists and is not an empty folder.
        ValueError: A size or count is out of range.
    """
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    if train_per_class < 0 or val_per_class < 0 or seed < 0:
        raise ValueError("train_per_class, val_per_class and seed must be non-negative")

    def write(path: Path, class_name: str, rng: np.random.Generator) -> None:
        Image.fromarray(render_demo_image(class_name, rng, size)).save(path, format="JPEG", quality=92)

    return write_class_folders(
        out, DEMO_CLASSES, {"train": train_per_class, "val": val_per_class}, seed=seed, suffix=".jpg", write=write
    )


def write_class_folders(
    out: str | Path,
    classes: Sequence[str],
    counts: dict[str, int],
    *,
    seed: int,
    suffix: str,
    write: Callable[[Path, str, np.random.Generator], None],
) -> Path:
    """Fill ``out/<split>/<class>/<index:05d><suffix>`` with ``write(path, class_name, rng)`` for every item.

    Each item gets its own generator, ``np.random.default_rng([seed, split_id, class_id, index])``. The folder is
    built in a temporary sibling renamed to ``out`` at the end, so an interrupted run never leaves a partial set
    that looks complete.

    Raises:
        FileExistsError: ``out`` exists and is not an empty folder.
    """
    out = Path(os.path.abspath(Path(out).expanduser()))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    temp_dir = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        for split, count in counts.items():
            for class_id, class_name in enumerate(classes):
                class_dir = temp_dir / split / class_name
                class_dir.mkdir(parents=True)
                for index in range(count):
                    rng = np.random.default_rng([seed, _SPLIT_IDS[split], class_id, index])
                    write(class_dir / f"{index:05d}{suffix}", class_name, rng)
        if out.exists():
            out.rmdir()
        os.rename(temp_dir, out)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return out


def demo_images_root(*, size: int = 64, train_per_class: int = 500, val_per_class: int = 100, seed: int = 0) -> Path:
    """The cache folder of one demo image set (it holds ``raw/`` and ``prepared/``)."""
    name = f"demo-images-s{size}-n{train_per_class}-{val_per_class}-seed{seed}"
    return fovea_home() / "datasets" / name


def ensure_demo_images(*, size: int = 64, train_per_class: int = 500, val_per_class: int = 100, seed: int = 0) -> Path:
    """The prepared demo dataset, generated and prepared (with Ray Data) on first use and cached in FOVEA_HOME.

    Args:
        size: Image side in pixels.
        train_per_class: Training images per class.
        val_per_class: Validation images per class.
        seed: Seed of the whole set.

    Returns:
        The prepared dataset folder (it holds ``manifest.json``).
    """
    from fovea.data.prepare import prepare_images

    root = demo_images_root(size=size, train_per_class=train_per_class, val_per_class=val_per_class, seed=seed)
    return ensure_prepared(
        root,
        "image",
        make=lambda raw: make_demo_images(
            raw, size=size, train_per_class=train_per_class, val_per_class=val_per_class, seed=seed
        ),
        prepare=lambda raw, prepared: prepare_images(raw, prepared, shard_rows=500),
        count=len(DEMO_CLASSES) * (train_per_class + val_per_class),
    )


def ensure_prepared(
    root: Path,
    kind: str,
    *,
    make: Callable[[Path], object],
    prepare: Callable[[Path, Path], object],
    count: int,
) -> Path:
    """``root/prepared``, made on first use: ``make(root/"raw")`` writes the raw files, ``prepare`` the shards.

    Says so in one line when it starts (``count`` files of ``kind``) and one when done, with the time; nothing when
    the set is already there. Safe when several processes ask at once: both steps build in temporary folders
    renamed into place, and a process that loses the race uses the winner's complete folder.
    """
    raw, prepared = root / "raw", root / "prepared"
    if (prepared / MANIFEST_NAME).is_file():
        return prepared

    start = time.perf_counter()
    print(f"making the demo {kind} set ({count} {kind}s) in {root} ...", flush=True)
    if not raw.is_dir():
        try:
            make(raw)
        except (FileExistsError, OSError):
            # Another process may have finished the same set first; its rename is atomic, so raw/ is complete.
            if not raw.is_dir():
                raise
    if prepared.exists() and not (prepared / MANIFEST_NAME).exists():
        # Our own cache folder without a manifest can only be debris; preparation refuses to write into it.
        shutil.rmtree(prepared)
    try:
        prepare(raw, prepared)
    except (FileExistsError, OSError):
        if not (prepared / MANIFEST_NAME).is_file():
            raise
    print(f"made the demo {kind} set in {time.perf_counter() - start:.1f} s: {prepared}", flush=True)
    return prepared
