"""A model folder that needs neither MLflow nor pickle: ``weights.pt`` (a state dict) and ``fovea_model.json`` (how
to rebuild the architecture, the classes and the input normalisation). ``fovea models download`` writes one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fovea.models.factory import create_model
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
    torch.save({key: value.detach().cpu() for key, value in model.state_dict().items()}, directory / WEIGHTS_FILE)
    (directory / INFO_FILE).write_text(json.dumps(redact(info), indent=1, default=str))
    return directory


def is_model_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by ``save_model_dir``."""
    return (Path(path) / WEIGHTS_FILE).is_file() and (Path(path) / INFO_FILE).is_file()


def load_model_dir(directory: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a ``save_model_dir`` folder and load its weights (``torch.load(weights_only=True)``).

    Returns:
        ``(module in eval mode on the CPU, info)``.

    Raises:
        FileNotFoundError: the folder lacks ``weights.pt`` or ``fovea_model.json``.
    """
    directory = Path(directory)
    if not is_model_dir(directory):
        raise FileNotFoundError(f"{directory}: not a fovea model folder (needs {WEIGHTS_FILE} and {INFO_FILE})")
    info = json.loads((directory / INFO_FILE).read_text())
    model = create_model(info["model_name"], **info["create_kwargs"])
    state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval(), info
