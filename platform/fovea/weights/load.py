"""Load a weights file into a model, whatever published layout it is in, and say exactly what happened.

Every tensor is accounted for: the file's layout is recognised by its keys (``layouts.detect_layout``) and converted
to fovea's keys, the family's ``checkpoint_filter_fn`` fits it to the model (position embeddings to another grid or
clip length, 2D weights inflated to video), and then every key the model has must come from the file and every key
the file has must go into the model. The one exception is the classifier: one of another size (another dataset's
classes) or none at all leaves the model's freshly initialised head, and the report says so in one line. Anything
else missing, unexpected or of another shape is an error naming the first keys.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fovea.errors import joined_lines, typed_line
from fovea.weights.base import State, WeightsInfo
from fovea.weights.layouts import detect_layout
from fovea.weights.read import read_weights

# buffers a model rebuilds itself, which some files carry and others do not
_DERIVED = ("relative_position_index", "attn_mask")


@dataclass
class LoadReport:
    """What ``load_weights`` did.

    Attributes:
        path: the file or folder read.
        layout: the layout's name (``torchvision-mvit``, ``fovea``, ...) and where such files come from.
        tensors: how many tensors went into the model.
        reset_head: the model's classifier keys left at their fresh initialisation (the file's head had another
            size, or none).
        file_classes: classes of the file's classifier, when it has one.
        info: what the file records about itself (frames, image size, normalisation, ...).
        normalisation: the mean and std the model now records as its own (the file's, where it says).
    """

    path: Path
    layout: str
    origin: str
    tensors: int
    reset_head: list[str] = field(default_factory=list)
    file_classes: int | None = None
    info: WeightsInfo | None = None
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    notes: list[str] = field(default_factory=list)
    model_classes: int = 0

    def lines(self) -> list[str]:
        """One line on the file and its layout, one on the classifier when it was reset, then the notes."""
        lines = [f"weights: {self.path} ({self.layout}: {self.origin}), {self.tensors} tensors loaded"]
        if self.reset_head:
            before = f"the file's {self.file_classes} classes" if self.file_classes else "the file has none"
            size = f"{self.model_classes} classes" if self.model_classes else "the dataset's classes"
            lines.append(f"weights: classifier reset to {size} ({before})")
        return lines + [f"weights: {note}" for note in self.notes]


def family_of(model: nn.Module) -> str:
    """The fovea family module a model comes from (``mvit``, ``cvt``, ...), or ``""`` for timm's."""
    module = type(model).__module__
    return module.rsplit(".", 1)[-1] if module.startswith("fovea.models.") else ""


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier", "head")
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(f"{name}." for name in names)


def _fit_to_model(state: State, model: nn.Module, where: str) -> State:
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state
    try:
        return filter_fn(state, model)
    except Exception as err:  # noqa: BLE001 - timm's filters index the tensors they expect: a foreign file fails
        raise ValueError(f"{where}: does not fit {type(model).__name__} ({typed_line(err, limit=200)})") from None


def _listed(keys: list[str]) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > 4 else ""
    return ", ".join(keys[:4]) + more


def _misfit(key: str, value: torch.Tensor, own: State) -> bool:
    return key in own and own[key].shape != value.shape


def _check_keys(state: State, model: nn.Module, where: str) -> list[str]:
    """Drop a classifier of another size; raise on anything else that does not fit. Returns the head keys reset."""
    own = model.state_dict()
    head = classifier_prefixes(model)
    resized = [k for k, v in state.items() if k.startswith(head) and k in own and own[k].shape != v.shape]
    for key in resized:
        del state[key]
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    unexpected = [k for k in state if k not in own and not k.endswith(_DERIVED)]
    missing = [k for k in own if k not in state and not k.endswith(_DERIVED)]
    missing_body = [k for k in missing if not k.startswith(head)]
    unexpected_body = [k for k in unexpected if not k.startswith(head)]
    name = type(model).__name__
    if wrong:
        raise ValueError(f"{where}: shapes do not fit {name}: {_listed(wrong)}")
    if unexpected_body or missing_body:
        parts = []
        if missing_body:
            parts.append(f"missing {_listed(missing_body)}")
        if unexpected_body:
            parts.append(f"unexpected {_listed(unexpected_body)}")
        raise ValueError(f"{where}: does not fit {name}: {'; '.join(parts)}")
    for key in unexpected:  # a head the model does not have (e.g. a second classifier): not ours to load
        del state[key]
    for key in [k for k in state if k.endswith(_DERIVED) and k not in own]:
        del state[key]
    return [k for k in own if k.startswith(head) and k not in state]


def load_weights(model: nn.Module, path: str | Path) -> LoadReport:
    """Load a weights file or transformers folder into ``model`` (any recognised layout) and report what happened.

    Raises:
        ValueError: one line naming the file: unreadable (a ``CheckpointError``), weights of another family, or
            tensors other than the classifier missing, unexpected or of another shape (the first keys named).
    """
    if Path(path).suffix == ".npz":
        return load_jax_npz(model, Path(path).expanduser())
    source = read_weights(path)
    layout = detect_layout(source)
    where = f"{source.path} ({layout.name})" if layout.family else str(source.path)
    family = family_of(model)
    if layout.family and layout.family != family:
        raise ValueError(
            f"{source.path}: holds {layout.name} weights ({layout.family}); {type(model).__name__} is not one"
        )
    try:
        info = layout.describe(source)
        state = layout.convert(source)
    except (KeyError, ValueError, RuntimeError, IndexError) as err:
        raise ValueError(f"{where}: cannot convert ({typed_line(err, limit=200)})") from None
    state = _fit_to_model(state, model, where)
    reset = _check_keys(state, model, where)
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a dtype or value that cannot be copied in: torch's message takes several lines
        raise ValueError(f"{where}: does not fit {type(model).__name__} ({joined_lines(err)[:300]})") from None
    report = LoadReport(
        path=source.path,
        layout=layout.name,
        origin=layout.origin,
        tensors=len(state),
        reset_head=reset,
        file_classes=info.num_classes,
        info=info,
        model_classes=int(getattr(model, "num_classes", 0) or 0),
    )
    _adopt_recorded_inputs(model, info, report)
    return report


def _adopt_recorded_inputs(model: nn.Module, info: WeightsInfo, report: LoadReport) -> None:
    """Make the file's normalisation the model's own (``model_statistics`` reads it), and note clip differences."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if info.mean and info.std:
        cfg["mean"], cfg["std"] = tuple(info.mean), tuple(info.std)
        model.pretrained_cfg = cfg
        report.notes.append(f"normalisation from the file: mean {_short(info.mean)}, std {_short(info.std)}")
    if cfg.get("mean") and cfg.get("std"):
        report.normalisation = (tuple(cfg["mean"]), tuple(cfg["std"]))
    frames = getattr(model, "num_frames", None)
    if info.num_frames and frames and info.num_frames != frames:
        report.notes.append(f"the weights were trained on {info.num_frames}-frame clips; the model takes {frames}")
    if info.frame_interval:
        report.notes.append(f"the weights were trained with frame interval {info.frame_interval}")


def _short(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def load_jax_npz(model: nn.Module, path: Path) -> LoadReport:
    """Google's JAX ``.npz`` ViT releases (the original ViT, AugReg, big_vision), read by timm's own loader
    (``model.load_pretrained``), held to the same account: every tensor but the classifier must come from the file.

    timm's loader copies what it finds and says nothing of the rest, so each floating tensor is filled with NaN
    first: one still NaN afterwards was not in the file. A classifier of another size keeps its fresh values.
    """
    load = getattr(model, "load_pretrained", None)
    if load is None:
        kind = type(model).__name__
        raise ValueError(f"{path}: a JAX .npz checkpoint, which only timm's ViT-family models read ({kind} does not)")
    tensors = dict(model.state_dict())
    on_meta = any(t.is_meta for t in tensors.values())
    head = classifier_prefixes(model)
    fresh = {k: v.detach().clone() for k, v in tensors.items() if k.startswith(head)}
    floating = [k for k, v in tensors.items() if v.is_floating_point()]
    with torch.no_grad():
        for key in floating:
            tensors[key].fill_(float("nan"))
        try:
            load(str(path))
        except Exception as err:  # noqa: BLE001 - a missing array is a KeyError, a bad file an OSError or ValueError
            raise ValueError(f"{path}: does not fit {type(model).__name__} ({typed_line(err, limit=200)})") from None
        untouched = [] if on_meta else [k for k in floating if torch.isnan(tensors[k]).any()]
        reset = [k for k in untouched if k.startswith(head)]
        body = [k for k in untouched if not k.startswith(head)]
        if body:
            raise ValueError(f"{path}: does not fit {type(model).__name__}: missing {_listed(body)}")
        for key in reset:
            tensors[key].copy_(fresh[key])
    report = LoadReport(
        path=path,
        layout="google-vit-npz",
        origin="Google's JAX ViT releases (.npz), read by timm",
        tensors=len(floating) - len(untouched),
        reset_head=reset,
        model_classes=int(getattr(model, "num_classes", 0) or 0),
    )
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("mean") and cfg.get("std"):  # the preset's (the .npz records none): timm's tag for these weights
        report.normalisation = (tuple(cfg["mean"]), tuple(cfg["std"]))
    return report
