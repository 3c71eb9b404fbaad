"""What a weights file is, as every converter sees it: the tensors, what the file says about itself, and a layout.

A *layout* is one published way of naming a family's tensors (torchvision's MViT, PySlowFast's, transformers'
TimeSformer, Microsoft's CvT, ...). Each converter module in this package declares its layouts as ``LAYOUTS``: how
to recognise a file by its keys, how to rename (and reshape) its tensors into fovea's keys for that family, and what
the file records about itself (classes, frames, image size, normalisation, architecture arguments). No converter
knows a model object: the family's ``checkpoint_filter_fn`` then fits the converted tensors to the model at hand
(position embeddings to another grid, 2D weights inflated to video).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class WeightsSource:
    """A weights file (or a transformers model folder) read into memory.

    Attributes:
        path: the file or folder given.
        state: its tensors, unnested from ``model_state``/``model``/``state_dict`` and stripped of DDP's ``module.``
            and torch.compile's ``_orig_mod.`` prefixes.
        meta: what the file says about itself: ``config`` (a transformers ``config.json``, found in the folder or
            beside the file), ``preprocessor`` (its ``preprocessor_config.json``), ``cfg`` (the YAML text that
            PySlowFast and the TimeSformer repo store in their ``.pyth`` files), ``format`` (``safetensors``,
            ``torch`` or ``transformers-folder``) and ``nested_under`` (the key the tensors sat under, if any).
    """

    path: Path
    state: State
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WeightsInfo:
    """What a file records about the model its weights belong to; None where it does not say.

    ``model_args`` are constructor arguments the weights imply (e.g. ``attention="divided"``), and
    ``suggested_model`` a fovea preset they fit, for ``fovea weights inspect`` and ``import``.
    """

    family: str
    num_classes: int | None = None
    classes: list[str] | None = None
    num_frames: int | None = None
    frame_interval: int | None = None
    img_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    suggested_model: str | None = None


@dataclass(frozen=True)
class Layout:
    """One published key layout of one family.

    Attributes:
        name: short and stable (``torchvision-mvit``); recorded in reports, tags and ``fovea weights inspect``.
        family: the fovea model family it converts to: the name of the module under ``fovea.models``
            (``mvit``, ``timesformer``, ``vivit``, ``cvt``), or ``""`` for a layout that is already fovea's or timm's.
        origin: where users get such files, in a few words.
        detect: whether a source is in this layout (from its keys and meta alone; cheap, never raises).
        convert: the source's tensors renamed and reshaped into fovea's keys for ``family``.
        describe: what the source records about itself.
    """

    name: str
    family: str
    origin: str
    detect: Callable[[WeightsSource], bool]
    convert: Callable[[WeightsSource], State]
    describe: Callable[[WeightsSource], WeightsInfo]


# the Kinetics normalisation of every published MViT and TimeSformer video model: torchvision's MViT_V1_B_Weights
# transforms, PySlowFast's DATA.MEAN/STD defaults (slowfast/config/defaults.py), pytorchvideo's
# kinetics_classification_mvit_16x4, and the TimeSformer repository's defaults (timesformer/config/defaults.py),
# which none of its configs override
KINETICS_MEAN, KINETICS_STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)


def float_tuple(value: Any) -> tuple[float, ...] | None:
    """A config's list of numbers (a mean, a std) as a tuple, or None when it is not one."""
    if isinstance(value, list | tuple) and value and all(isinstance(v, int | float) for v in value):
        return tuple(float(v) for v in value)
    return None


def has_prefix(state: State, *prefixes: str) -> bool:
    """Whether any key starts with one of ``prefixes``."""
    return any(key.startswith(prefixes) for key in state)


def head_rows(state: State, key: str) -> int | None:
    """The number of classes a classifier weight ``key`` has (its rows), or None when absent."""
    weight = state.get(key)
    return int(weight.shape[0]) if weight is not None and weight.dim() >= 1 else None


def yacs_config(source: WeightsSource) -> dict[str, Any]:
    """The yacs config PySlowFast and the TimeSformer repo store in their ``.pyth`` (``cfg.dump()``'s YAML), as
    nested dicts; {} when the file has none or it does not parse."""
    text = source.meta.get("cfg")
    if not isinstance(text, str):
        return {}
    import yaml

    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return tree if isinstance(tree, dict) else {}


def yacs_value(tree: dict[str, Any], path: str) -> Any:
    """``tree["MVIT"]["PATCH_STRIDE"]`` for ``"MVIT.PATCH_STRIDE"``, or None; yacs writes the tuples its YAML gave
    as text ("(3, 7, 7)"), read back here."""
    value: Any = tree
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, str) and value.strip().startswith(("(", "[")):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return None
    return value
