"""The model a run trains, as ``create_model`` arguments: written once, read by training, evaluation, the teacher,
sweeps and the registry. A checkpoint stores these arguments (``create_args``), so readers take them as they are."""

from __future__ import annotations

from typing import Any

from fovea.config import Config


def model_create_args(cfg: Config, *, num_classes: int) -> dict[str, Any]:
    """The keyword arguments ``create_model(cfg.model.name, **args)`` rebuilds the trained architecture with (no
    weights: those come from the checkpoint); recorded in checkpoints and registered models as ``create_kwargs``."""
    return create_args_of(
        cfg.model.model_dump(mode="python"), cfg.data.model_dump(mode="python"), num_classes=num_classes
    )


def create_args_of(model: dict[str, Any], data: dict[str, Any], *, num_classes: int) -> dict[str, Any]:
    """:func:`model_create_args` from the ``model`` and ``data`` sections of a recorded config (a dict, as an older
    checkpoint holds it): the one place the architecture's arguments are derived."""
    from fovea.models import is_video_model

    args: dict[str, Any] = {"num_classes": num_classes, "img_size": model.get("img_size")}
    if is_video_model(model["name"]):
        args["num_frames"] = data.get("num_frames", 16)
    if model.get("window_size") is not None:
        args["window_size"] = model["window_size"]
    return {**args, **(model.get("kwargs") or {})}


def checkpoint_create_args(state: dict[str, Any], config: dict[str, Any], *, num_classes: int) -> dict[str, Any]:
    """A training checkpoint's ``create_args``, or (a checkpoint written before they were stored) the arguments its
    recorded config implies."""
    recorded = state.get("create_args")
    if isinstance(recorded, dict):
        return {**recorded, "num_classes": num_classes}
    return create_args_of(config["model"], config.get("data", {}), num_classes=num_classes)


def checkpoint_normalization(state: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    """The input mean and std a training checkpoint's run normalised with (recorded since start weights can bring
    their own, which the architecture's preset does not know), or None for a checkpoint that predates them."""
    recorded = state.get("normalization")
    if isinstance(recorded, dict) and recorded.get("mean") and recorded.get("std"):
        return [float(v) for v in recorded["mean"]], [float(v) for v in recorded["std"]]
    return None
