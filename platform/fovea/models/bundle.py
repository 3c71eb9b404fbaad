"""A model folder that needs neither MLflow nor pickle: ``weights.pt`` (a state dict, with its checksum in
``weights.pt.sha256``) and ``fovea_model.json`` (how to rebuild the architecture, the classes and the input
normalisation). ``fovea models download`` writes one; every model version fovea registers carries one. The folder's
format (and writing it) is ``fovea.model_folder``, which needs no model code; this module builds the model back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from fovea.checkpoints import CheckpointError, load_verified
from fovea.model_folder import INFO_FILE, WEIGHTS_FILE, is_model_dir, save_model_dir
from fovea.models.factory import create_model

__all__ = ["INFO_FILE", "WEIGHTS_FILE", "is_model_dir", "load_model_dir", "save_model_dir"]


def load_model_dir(directory: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a ``save_model_dir`` folder and load its weights (``torch.load(weights_only=True)``).

    Returns:
        ``(module in eval mode on the CPU, info)``.

    Raises:
        FileNotFoundError: the folder lacks ``weights.pt`` or ``fovea_model.json``.
        CheckpointError: (a ``ValueError``) unreadable or corrupt files, or weights that would need unpickling.
    """
    directory = Path(directory)
    if not is_model_dir(directory):
        raise FileNotFoundError(f"{directory}: not a fovea model folder (needs {WEIGHTS_FILE} and {INFO_FILE})")
    try:
        info = json.loads((directory / INFO_FILE).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{directory / INFO_FILE}: unreadable ({err})") from None
    missing = [key for key in ("model_name", "create_kwargs") if key not in info]
    if missing:
        raise CheckpointError(f"{directory / INFO_FILE}: lacks {', '.join(missing)}: the architecture is unknown")
    state = load_verified(directory / WEIGHTS_FILE, what="weights")
    if not isinstance(state, dict):
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: holds no state dict")
    model = create_model(info["model_name"], **info["create_kwargs"])
    model.load_state_dict(state)
    return model.eval(), info
