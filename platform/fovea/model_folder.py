"""The pickle-free model folder's format: ``weights.pt`` (a state dict, checksummed in ``weights.pt.sha256``) and
``fovea_model.json`` (how ``fovea.models.create_model`` rebuilds the architecture, the classes, the input
normalisation). Writing one needs no model code, so ``fovea.track`` can log it; ``fovea.models.load_model_dir``
builds the model back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from fovea.checkpoints import save_verified
from fovea.secrets import redact

WEIGHTS_FILE = "weights.pt"
INFO_FILE = "fovea_model.json"


def save_model_dir(directory: str | Path, model: nn.Module, info: dict[str, Any]) -> Path:
    """Write ``model``'s weights and ``info`` (must hold ``model_name`` and ``create_kwargs``) to ``directory``;
    secrets in ``info`` (e.g. a constructor argument ``api_token``) are written as ``***``."""
    missing = [key for key in ("model_name", "create_kwargs") if key not in info]
    if missing:
        raise ValueError(f"model info lacks {', '.join(missing)}: the architecture could not be rebuilt")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    save_verified(directory / WEIGHTS_FILE, weights, what="weights")  # atomic, with weights.pt.sha256
    (directory / INFO_FILE).write_text(json.dumps(redact(info), indent=1, default=str))
    return directory


def is_model_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by ``save_model_dir``."""
    return (Path(path) / WEIGHTS_FILE).is_file() and (Path(path) / INFO_FILE).is_file()
