"""A model that predicts from raw inputs: views made by ``fovea.predict.inputs``, normalised and scored as evaluation
scores them (``fovea.train.loop.Normalize``, ``fovea.evaluate.scoring.view_mean_logits``: the mean of a sample's
views' logits; a distillation-token DeiT's two heads averaged), then each input's top-k class names with softmax
probabilities.

Used by the registered pyfunc (``fovea.track.pyfunc_code``), the batch job's Ray Data actors
(``fovea.predict.batch``) and ``fovea predict``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fovea.predict.inputs import InputSpec, ViewMaker, spec_from_info


@dataclass
class Prediction:
    """One input's result: its top-k classes and probabilities, the logits when asked for, or why it failed."""

    classes: list[str]
    probabilities: list[float]
    logits: list[float] | None = None
    error: str = ""

    @property
    def label(self) -> str:
        """The top-1 class ('' for a failed input)."""
        return self.classes[0] if self.classes else ""

    @property
    def probability(self) -> float:
        """The top-1 probability (NaN for a failed input)."""
        return self.probabilities[0] if self.probabilities else float("nan")


class Predictor:
    """A classifier with its classes and input settings, predicting from bytes, paths or uint8 arrays.

    Args:
        module: the network (moved to ``device``, eval mode).
        classes: class names in logit order (None: ``class_0``, ``class_1``, ...).
        spec: how inputs are decoded (``fovea.predict.inputs.spec_from_info``).
        device: where the model runs (default: CPU).
        batch_size: inputs per forward pass (their views together).
    """

    def __init__(
        self,
        module: nn.Module,
        classes: list[str] | None,
        spec: InputSpec,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
    ) -> None:
        from fovea.train.loop import Normalize

        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.spec = spec
        self.views = ViewMaker(spec)
        self.normalize = Normalize(spec.mean, spec.std).to(self.device)
        self.batch_size = max(1, int(batch_size))
        self.classes = list(classes) if classes else None

    @classmethod
    def from_info(cls, module: nn.Module, info: dict[str, Any], *, views: str = "default", **options: Any) -> Predictor:
        """A predictor for a model folder's module and ``fovea_model.json`` (or a ``LoadedModel``'s facts)."""
        from fovea.models import is_video_model

        video = is_video_model(str(info.get("model_name", "")))
        overrides = {key: options.pop(key) for key in list(options) if key in InputSpec.__dataclass_fields__}
        spec = spec_from_info(info, video=video, views=views, **overrides)
        return cls(module, info.get("classes"), spec, **options)

    @classmethod
    def from_folder(cls, folder: str | Path, *, views: str = "default", **options: Any) -> Predictor:
        """A predictor for a pickle-free model folder (``weights.pt`` + ``fovea_model.json``)."""
        from fovea.models import load_model_dir

        module, info = load_model_dir(folder)
        return cls.from_info(module, info, views=views, **options)

    def class_names(self, count: int) -> list[str]:
        """The names of ``count`` logits (``class_<i>`` when the model records none)."""
        if self.classes is not None:
            if len(self.classes) != count:
                raise ValueError(f"the model gives {count} logits but records {len(self.classes)} classes")
            return self.classes
        return [f"class_{index}" for index in range(count)]

    @torch.no_grad()
    def logits(self, views: np.ndarray) -> torch.Tensor:
        """Each input's logits ``(B, classes)``, the mean over its views, from uint8 views ``(B, V, 3, [T,] S, S)``."""
        from fovea.evaluate.scoring import view_mean_logits

        inputs = torch.from_numpy(np.ascontiguousarray(views)).to(self.device)
        if self.spec.flip:
            inputs = torch.cat([inputs, inputs.flip(-1)], dim=1)
        num_views = inputs.shape[1]
        flat = self.normalize(inputs.flatten(0, 1))
        logits, _ = view_mean_logits(self.module, flat, num_views, dtype=None, device=self.device)
        return logits.float().cpu()

    def top_k(self, logits: torch.Tensor, k: int, *, with_logits: bool = False) -> list[Prediction]:
        """``Prediction`` of each row of ``logits``: the ``k`` likeliest classes, best first."""
        names = self.class_names(logits.shape[1])
        probabilities = logits.softmax(dim=1)
        top = probabilities.topk(max(1, min(int(k), logits.shape[1])), dim=1)
        return [
            Prediction(
                classes=[names[i] for i in indices.tolist()],
                probabilities=[float(p) for p in values.tolist()],
                logits=[float(v) for v in row.tolist()] if with_logits else None,
            )
            for values, indices, row in zip(top.values, top.indices, logits, strict=True)
        ]

    def prepare(self, items: list[Any]) -> tuple[list[np.ndarray | None], list[str]]:
        """Each input's views, or None and the reason (one line) for an input that cannot be used."""
        from fovea.errors import first_line, typed_line

        views: list[np.ndarray | None] = []
        errors: list[str] = []
        for item in items:
            try:
                views.append(self.views(item))
                errors.append("")
            except Exception as err:  # noqa: BLE001 - any decoder error: this input fails, not the others
                views.append(None)
                errors.append(first_line(err, limit=300) if isinstance(err, ValueError) else typed_line(err, limit=300))
        return views, errors

    def predict(self, items: list[Any], *, top_k: int = 5, with_logits: bool = False) -> list[Prediction]:
        """A ``Prediction`` per input, in order; inputs that do not decode get their ``error`` and no classes."""
        views, errors = self.prepare(items)
        results: list[Prediction] = [Prediction([], [], None, error) for error in errors]
        good = [index for index, view in enumerate(views) if view is not None]
        for start in range(0, len(good), self.batch_size):
            chunk = good[start : start + self.batch_size]
            batch = np.stack([views[index] for index in chunk])  # type: ignore[misc]
            for index, prediction in zip(
                chunk, self.top_k(self.logits(batch), top_k, with_logits=with_logits), strict=True
            ):
                results[index] = prediction
        return results
