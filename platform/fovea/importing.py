"""``fovea weights import``: published weights converted once into a fovea model, saved as a model folder and
registered, so ``model.checkpoint=models:/NAME@base`` and ``distill.teacher=models:/NAME@base`` start from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from fovea.errors import first_line


def _img_size(module: nn.Module, create: dict[str, Any]) -> int:
    """The model's input resolution: as built, else its preset's (``pretrained_cfg['input_size']``)."""
    if create.get("img_size"):
        return int(create["img_size"])
    input_size = (getattr(module, "pretrained_cfg", None) or {}).get("input_size") or (3, 224, 224)
    return int(input_size[-1])


def build_from_weights(
    path: str | Path, model_name: str, *, img_size: int | None = None, num_frames: int | None = None
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """The model ``model_name`` holding the weights of ``path``, with the file's own classifier.

    The file's classes, image size and clip length (where it records them; ``img_size``/``num_frames`` override)
    and the architecture arguments its layout implies size the model; every tensor must load, the classifier too.

    Returns:
        ``(module in eval mode, metadata for a model folder / the registry, inspect_weights' description)``.

    Raises:
        ValueError: one line: an unreadable file, weights of another family, keys that do not fit, or a file with
            no classifier (its classes unknown).
    """
    from fovea.models import check_model_name, create_model, is_video_model
    from fovea.weights import inspect_weights

    check_model_name(model_name)
    described = inspect_weights(path)
    classes = described["num_classes"]
    if not classes:
        raise ValueError(f"{path}: no classifier, so the number of classes is unknown; nothing to import")
    video = is_video_model(model_name)
    create: dict[str, Any] = {"num_classes": int(classes), **described["model_args"]}
    size = img_size or described["img_size"]
    if size:
        create["img_size"] = int(size)
    frames = num_frames or described["num_frames"]
    if video and frames:
        create["num_frames"] = int(frames)
    try:
        module = create_model(model_name, checkpoint=str(path), **create)
    except TypeError as err:
        raise ValueError(f"model {model_name}: {first_line(err)}") from None
    report = module.load_report
    if report.reset_head:
        raise ValueError(f"{path}: its classifier does not fit {model_name} ({', '.join(report.reset_head[:3])})")
    mean, std = report.normalisation or (None, None)
    metadata: dict[str, Any] = {
        "model_name": model_name,
        "create_kwargs": create,
        "img_size": _img_size(module, create),
        "mean": list(mean) if mean else None,
        "std": list(std) if std else None,
        "source_layout": described["layout"],
        "source_sha256": described["sha256"],
    }
    if described["classes"]:
        metadata["classes"] = list(described["classes"])
    if video:
        metadata["num_frames"] = int(create.get("num_frames") or getattr(module, "num_frames", 0) or 0)
        if described["frame_interval"]:  # else unknown: the file does not say, and no default is claimed
            metadata["frame_interval"] = int(described["frame_interval"])
        metadata["sampling"] = "dense"
    return module.eval(), metadata, described


def save_imported(directory: str | Path, module: nn.Module, metadata: dict[str, Any]) -> Path:
    """Write the imported model as a fovea model folder (``weights.pt`` + ``fovea_model.json``)."""
    from fovea.model_folder import save_model_dir

    return save_model_dir(directory, module, metadata)


def register_imported(
    module: nn.Module,
    metadata: dict[str, Any],
    described: dict[str, Any],
    *,
    name: str,
    tracking_uri: str,
    experiment: str = "fovea-imports",
    alias: str = "base",
) -> tuple[str, str]:
    """Register the imported model as a new version of ``name`` with ``alias``; returns ``(run_id, version)``."""
    import numpy as np

    from fovea.track import register_imported_model

    size = metadata["img_size"]
    frames = (metadata["num_frames"],) if metadata.get("num_frames") else ()
    example = np.zeros((1, 3, *frames, size, size), dtype=np.float32)
    return register_imported_model(
        tracking_uri,
        module,
        name=name,
        experiment=experiment,
        input_example=example,
        metadata=metadata,
        source=described,
        alias=alias,
    )
