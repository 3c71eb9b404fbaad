"""Build models by name through timm's registry, and load weights into them from local files."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import register_model
from torch import nn

from fovea.errors import typed_line

_VIDEO_MODELS: set[str] = set()


def register_video_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """``timm.models.register_model`` for models that take clips ``(B, C, T, H, W)`` and a ``num_frames`` argument."""
    _VIDEO_MODELS.add(fn.__name__)
    return register_model(fn)


def is_video_model(name: str) -> bool:
    """Whether the registered model ``name`` takes video clips (and ``num_frames``) rather than images."""
    return name in _VIDEO_MODELS


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern (timm's and fovea's)."""
    return timm.list_models(pattern)


def check_model_name(name: str) -> None:
    """Raise a one-line ``ValueError`` (with close matches) if no model of that name is registered."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ValueError(f"model.name: unknown model {name!r}{hint}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(name: str, input_shape: tuple[int, ...], **create_args: Any) -> int | None:
    """Multiply-accumulates of one forward pass of ``input_shape`` (batch included), as vision papers count them.

    The model is built on the ``meta`` device (no memory, no weights), and ``FlopCounterMode`` counts its
    convolutions and matmuls; MACs are its FLOPs / 2. On the meta device SDPA runs as plain matmuls, so attention is
    counted (the fused CPU kernel is invisible to the counter). Returns None for a model the meta device cannot run.
    """
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.device("meta"):
            model = create_model(name, **create_args).eval()
            inputs = torch.empty(input_shape, device="meta")
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(inputs)
    except (NotImplementedError, RuntimeError, TypeError, ValueError):
        return None
    return counter.get_total_flops() // 2


def model_statistics(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input mean and std a model was trained with: its pretrained config's, else ImageNet's (timm's default)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = pretrained_cfg.get("mean", IMAGENET_DEFAULT_MEAN)
    return tuple(mean), tuple(pretrained_cfg.get("std", IMAGENET_DEFAULT_STD))


def create_model(
    name: str,
    *,
    num_classes: int,
    img_size: int | None = None,
    pretrained: bool = False,
    checkpoint: str | Path = "",
    window_size: int | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    **kwargs: Any,
) -> nn.Module:
    """Create a registered model, optionally starting from published or local weights.

    The classifier is sized for ``num_classes``; weights for a different number of classes are loaded without
    their head. Position embeddings (and Swin's relative-position tables) are resized by timm's checkpoint
    filters when ``img_size`` or ``window_size`` differ from the weights'.

    Args:
        name: a name from ``list_models()``.
        num_classes: classes of the dataset.
        img_size: input resolution; None keeps the preset's. Ignored by models without the argument (CNNs).
        pretrained: load timm's published weights (fetched from the hub; fails clearly without network).
        checkpoint: a local weights file (``.pth``, ``.pt``, ``.bin``, ``.safetensors``, or a fovea checkpoint).
        window_size: Swin attention window; None keeps the preset's.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth.
        **kwargs: passed to the model's constructor.

    Raises:
        ValueError: unknown model, or an argument the architecture does not take.
        FileNotFoundError: the checkpoint file does not exist.
        RuntimeError: published weights could not be fetched.
    """
    check_model_name(name)
    if pretrained and checkpoint:
        raise ValueError("give either model.pretrained or model.checkpoint, not both")
    if checkpoint and not Path(checkpoint).expanduser().exists():
        raise FileNotFoundError(f"model.checkpoint: no such file: {checkpoint}")
    args: dict[str, Any] = dict(num_classes=num_classes, drop_rate=drop_rate, drop_path_rate=drop_path_rate, **kwargs)
    if img_size is not None:
        args["img_size"] = img_size
    if window_size is not None:
        args["window_size"] = window_size
    # fovea's own presets are published by other projects, in their layouts: fetched and converted by
    # fovea.weights (timm would warn and go on with random weights for a preset without a location)
    from fovea.weights.hub import fetch_published, is_fovea_preset

    if pretrained and is_fovea_preset(name):
        checkpoint, pretrained = fetch_published(name), False
    try:
        try:
            model = timm.create_model(name, pretrained=pretrained, **args)
        except TypeError as err:
            # CNNs (ResNet, ConvNeXt, ...) take any input size and have no img_size argument
            if "img_size" not in str(err) or "img_size" not in args:
                raise
            del args["img_size"]
            model = timm.create_model(name, pretrained=pretrained, **args)
    except TypeError as err:
        raise ValueError(f"model {name}: {err}") from None
    except (OSError, RuntimeError) as err:
        if not pretrained:
            raise
        raise RuntimeError(
            f"could not fetch published weights for {name} ({typed_line(err)}); "
            "without hub access, download them elsewhere and pass model.checkpoint=FILE"
        ) from None
    if checkpoint:
        model.load_report = load_weights(model, checkpoint)  # what was loaded and reset, for the caller to show
    use_sdpa(model)
    return model


def use_sdpa(model: nn.Module) -> int:
    """Turn on ``F.scaled_dot_product_attention`` in every timm attention layer that has it as an option.

    timm leaves it off where it calls it experimental (Swin's window attention, with its relative position bias as
    an additive mask): those layers then build the full softmax(QK^T) matrix themselves, which costs memory and
    rules out the fused GPU kernels. The results are the same to float rounding
    (``tests/models/test_attention_and_checkpointing.py``).

    Returns:
        How many layers were switched.
    """
    switched = 0
    for module in model.modules():
        if getattr(module, "fused_attn", True) is False:
            module.fused_attn = True
            switched += 1
    return switched


def window_fit_problem(model: nn.Module) -> str | None:
    """Why ``model``'s attention windows do not tile its feature maps, or None when they do (or it has none).

    A Swin window must divide every stage's feature map. A window larger than a map is shrunk to it (timm, like
    the paper's code, then attends over the whole map), which fits; a window that leaves a remainder is not an
    architecture the paper describes: timm would pad the map with zero tokens that unshifted windows attend to.
    """
    for name, module in model.named_modules():
        resolution = getattr(module, "input_resolution", None)
        window = getattr(module, "window_size", None)
        target = getattr(module, "target_window_size", window)
        if resolution is None or window is None:
            continue
        resolution, window = tuple(resolution), tuple(window)
        if any(size % side for size, side in zip(resolution, window, strict=True)):
            grid = "x".join(map(str, resolution))
            wanted = target[0] if isinstance(target, tuple | list) else target
            return f"window {wanted} does not tile the {grid} feature map of {name}"
    return None


def load_weights(model: nn.Module, path: str | Path) -> Any:
    """Load a weights file (any layout ``fovea.weights`` recognises) into ``model``; see ``fovea.weights.load_weights``.

    Returns:
        The ``LoadReport``: the layout, the classifier keys reset, notes on normalisation and clip length.
    """
    from fovea.weights import load_weights as load

    return load(model, path)
