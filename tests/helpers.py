"""Small image folders for tests: learnable, in the formats and sizes users bring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

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
