"""The model code of every registered fovea model (MLflow's models-from-code; ``fovea.track.pyfunc`` logs this file
with the model, and nothing in fovea imports it). MLflow runs it when the model loads: ``load_context`` rebuilds the
network from the pickle-free copy, and ``predict`` answers raw inputs with class names.

Inputs (a pandas DataFrame, a dict of columns, or a list of rows):

- ``image`` (``video`` for clip models): encoded file bytes, a base64 string of them (JSON), or a uint8 pixel array
  ``(H, W, 3)`` / nested lists of one (video: decoded frames ``(T, H, W, 3)``);
- ``path``: a file path (or ``s3://``, ``gs://`` URI) the serving process can read.

Params: ``top_k`` (5), ``logits`` (false: add each input's logits), ``views`` (``default``: a video model's recorded
clips x crops, an image model's centre view; ``single``; ``multi``).

Output: a DataFrame, a row per input, in order: ``label``, ``probability``, ``classes``, ``probabilities`` (top-k,
best first) and ``error`` ('' or why the input could not be used).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

COLUMNS = ("image", "video")


def _cell(value: Any) -> Any:
    """One input cell as ``fovea.predict`` takes it: bytes, a path, or a uint8 array; None for an empty cell."""
    import numpy as np

    if value is None or (isinstance(value, float) and value != value):  # None / NaN: this column is not used
        return None
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("an image/video string that is not base64 (file paths go in the 'path' column)") from None
    if isinstance(value, list):
        return np.asarray(value, dtype=np.uint8)
    if isinstance(value, np.ndarray) and value.dtype == object:  # a JSON array of arrays, as pandas holds it
        return np.asarray(value.tolist(), dtype=np.uint8)
    return value


def rows_of(model_input: Any) -> list[tuple[Any, str]]:
    """``(item, error)`` per input row: the item for ``fovea.predict`` (bytes, path, array) or the reason there is
    none."""
    import pandas as pd

    if isinstance(model_input, dict):
        model_input = pd.DataFrame(model_input)
    if isinstance(model_input, list):
        model_input = pd.DataFrame({"image": model_input})
    if not isinstance(model_input, pd.DataFrame):
        raise ValueError(f"give a DataFrame (or dict) with an image, video or path column, not {type(model_input)}")
    rows = []
    for _, row in model_input.iterrows():
        for column in (*COLUMNS, "path"):
            # MLflow makes {"path": ["a.jpg", "b.jpg"]} one row holding the list: each string is an input
            value = row[column] if column in row.index else None
            if isinstance(value, list | tuple) and value and all(isinstance(entry, str) for entry in value):
                rows += [_row({column: entry}) for entry in value]
                break
        else:
            rows.append(_row(row))
    return rows


def _row(row: Any) -> tuple[Any, str]:
    item, error = None, ""
    try:
        for column in COLUMNS:
            if column in row and item is None:
                item = _cell(row[column])
        if item is None and "path" in row and isinstance(row["path"], str) and row["path"]:
            item = row["path"]
    except ValueError as err:
        error = str(err)
    return item, error or ("" if item is not None else "no image, video or path in this row")


class FoveaClassifier(PythonModel):
    """A fovea classifier that takes raw inputs and answers class names (see the module docstring)."""

    def load_context(self, context):  # no annotations: MLflow would read them as a signature
        import torch

        from fovea.models import load_model_dir

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.module, self.info = load_model_dir(context.artifacts["fovea_model"])
        self.device = device
        self.predictors: dict[str, Any] = {}

    def predictor(self, views: str) -> Any:
        """The predictor for one ``views`` choice (made once)."""
        from fovea.predict.predictor import Predictor

        if views not in self.predictors:
            self.predictors[views] = Predictor.from_info(self.module, self.info, views=views, device=self.device)
        return self.predictors[views]

    def predict(self, context, model_input, params=None):  # no annotations: MLflow reads them as a signature
        import pandas as pd

        params = params or {}
        predictor = self.predictor(str(params.get("views") or "default"))
        with_logits = bool(params.get("logits", False))
        rows = rows_of(model_input)
        found = [index for index, (item, _) in enumerate(rows) if item is not None]
        predictions = predictor.predict(
            [rows[index][0] for index in found], top_k=int(params.get("top_k") or 5), with_logits=with_logits
        )
        results: list[dict[str, Any]] = [
            {"label": "", "probability": float("nan"), "classes": [], "probabilities": [], "error": error}
            for _, error in rows
        ]
        for index, prediction in zip(found, predictions, strict=True):
            results[index] = {
                "label": prediction.label,
                "probability": prediction.probability,
                "classes": prediction.classes,
                "probabilities": prediction.probabilities,
                "error": prediction.error,
            }
            if with_logits:
                results[index]["logits"] = prediction.logits
        columns = ["label", "probability", "classes", "probabilities", "error", *(["logits"] if with_logits else [])]
        return pd.DataFrame(results, columns=columns)


mlflow.models.set_model(FoveaClassifier())
