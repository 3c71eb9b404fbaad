"""Build models by name through timm's registry, and load weights into them from local files."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import register_model
from torch import nn

from fovea.errors import joined_lines, typed_line

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
    if checkpoint and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"model.checkpoint: no such file: {checkpoint}")
    args: dict[str, Any] = dict(num_classes=num_classes, drop_rate=drop_rate, drop_path_rate=drop_path_rate, **kwargs)
    if img_size is not None:
        args["img_size"] = img_size
    if window_size is not None:
        args["window_size"] = window_size
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
        load_weights(model, checkpoint)
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


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a weights file, never unpickling arbitrary objects.

    Accepts safetensors files, plain state dicts and checkpoints that nest one under ``model``,
    ``state_dict`` or ``model_ema``; strips DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes. A file
    with a ``.sha256`` checksum beside it (fovea's checkpoints and weights) is checked against it first.

    Raises:
        CheckpointError: (a ``ValueError``) one line: unreadable, truncated or corrupt (a safetensors header that
            does not match its data too), needing arbitrary unpickling, or holding no state dict of tensors.
    """
    from fovea.checkpoints import CheckpointError, load_verified, verify

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        verify(path)
        try:
            state = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - SafetensorError (a cut or lying header), OSError, ...
            raise CheckpointError(f"{path}: unreadable safetensors file ({typed_line(err)})") from None
    else:
        state = load_verified(path, what="weights file")
    for key in ("model", "state_dict", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: holds no state dict")
    cleaned = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: not a state dict of tensors ({key!r} holds a {type(value).__name__})")
        for prefix in ("module.", "_orig_mod."):
            key = str(key).removeprefix(prefix)
        cleaned[key] = value
    return cleaned


def _classifier_keys(model: nn.Module) -> tuple[str, ...]:
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier", "head")
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(f"{n}." for n in names)


def load_weights(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load a weights file into ``model``, adapting what timm's family filter can adapt.

    The family's ``checkpoint_filter_fn`` (when timm has one) resizes position embeddings and Swin's relative
    position tables; classifier weights of another shape are skipped so the new head keeps its fresh init.

    Returns:
        ``{"skipped": [...], "missing": [...]}``: the head keys left at their initial values.

    Raises:
        ValueError: the file cannot be read as weights (a ``CheckpointError``), or tensors other than the classifier
            are missing or do not fit (one line naming the file).
    """
    state = read_state_dict(path)
    family = sys.modules.get(type(model).__module__)
    filter_fn = getattr(family, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception as err:  # noqa: BLE001 - timm's filters index the tensors they expect: a foreign file fails
            raise ValueError(f"{path}: does not fit {type(model).__name__} ({typed_line(err, limit=200)})") from None
    own = model.state_dict()
    head = _classifier_keys(model)
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape and k.startswith(head)]
    for key in skipped:
        del state[key]
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise ValueError(f"{path}: shapes do not fit {type(model).__name__} for {', '.join(mismatched[:5])}")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a dtype or value that cannot be copied in: torch's message takes several lines
        raise ValueError(f"{path}: does not fit {type(model).__name__} ({joined_lines(err)[:300]})") from None
    missing = [k for k in result.missing_keys if not k.startswith(head) and not k.endswith("relative_position_index")]
    if missing:
        raise ValueError(f"{path}: missing weights for {', '.join(missing[:5])} ({len(missing)} in all)")
    return {"skipped": skipped, "missing": list(result.missing_keys)}
