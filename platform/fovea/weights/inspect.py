"""``fovea weights inspect``: what a weights file is, from its keys and what it records, without building a model."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fovea.weights.layouts import detect_layout
from fovea.weights.read import read_weights

# BatchNorm statistics are buffers, not parameters: leave them out of the count as timm's does
_NOT_PARAMETERS = ("running_mean", "running_var", "num_batches_tracked", "relative_position_index", "attn_mask")


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, or of a folder's weight files (sorted by name, concatenated) for a model folder."""
    path = Path(path)
    files = (
        sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
        if path.is_dir()
        else [path]
    )
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def inspect_weights(path: str | Path) -> dict[str, Any]:
    """A weights file's layout, family, classes, clip, image size, normalisation and parameter count.

    Raises:
        CheckpointError: (a ``ValueError``) one line: the file cannot be read as weights.
    """
    source = read_weights(path)
    layout = detect_layout(source)
    info = layout.describe(source)
    parameters = sum(
        value.numel()
        for key, value in source.state.items()
        if value.is_floating_point() and not key.endswith(_NOT_PARAMETERS)
    )
    return {
        "path": str(source.path),
        "format": source.meta.get("format", ""),
        "layout": layout.name,
        "origin": layout.origin,
        "family": layout.family or info.family or "",
        "suggested_model": info.suggested_model,
        "model_args": dict(info.model_args),
        "tensors": len(source.state),
        "parameters": parameters,
        "num_classes": info.num_classes,
        "classes": list(info.classes) if info.classes else None,
        "num_frames": info.num_frames,
        "frame_interval": info.frame_interval,
        "img_size": info.img_size,
        "mean": list(info.mean) if info.mean else None,
        "std": list(info.std) if info.std else None,
        "sha256": file_sha256(source.path),
    }
