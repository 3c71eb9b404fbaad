"""Where a model comes from: a registry URI, a training checkpoint, a downloaded model folder or a model name, loaded
the same way for the teacher, evaluation and prediction. ``fovea.track`` downloads; this module builds."""

from __future__ import annotations

import tempfile
from typing import Any

from torch import nn


def load_registered_model(model_uri: str, tracking_uri: str) -> tuple[nn.Module, dict[str, Any]]:
    """A registered model and what fovea recorded about it, from ``models:/NAME/VERSION`` or ``@ALIAS``.

    Nothing is unpickled: the version's pickle-free copy (``weights.pt``, checked against its ``.sha256`` and read
    with ``torch.load(weights_only=True)``, and ``fovea_model.json``, whose ``model_name`` and ``create_kwargs``
    rebuild the architecture) is loaded, never the pickled MLflow model.

    Returns:
        ``(module, info)``: the ``nn.Module`` on the CPU in eval mode, and ``info`` with ``version`` (the alias
        resolved), ``run_id``, and what was recorded: ``model_name``, ``create_kwargs``, ``classes``, ``mean``,
        ``std``, ``img_size`` and for video the clip sampling. Classes not recorded with the version come from the
        run's ``model_info/classes.json`` when it has one.

    Raises:
        ValueError: one line, for a name, version or alias the registry does not have, a version with no
            pickle-free copy, or a copy that does not verify or load.
    """
    from fovea.errors import first_line
    from fovea.models import load_model_dir
    from fovea.track import download_registered_model

    with tempfile.TemporaryDirectory(prefix="fovea-model-") as tmp:
        folder, found = download_registered_model(model_uri, tracking_uri, tmp)
        try:
            module, recorded = load_model_dir(folder)
        except (ValueError, RuntimeError, TypeError, KeyError) as err:  # corrupt copy, or weights that do not fit
            raise ValueError(f"{model_uri}: {first_line(err).replace(str(folder), found['plain_uri'])}") from None
    info: dict[str, Any] = {**recorded, "version": found["version"], "run_id": found["run_id"]}
    if "classes" not in info and found["run_classes"] is not None:
        info["classes"] = found["run_classes"]
    return module, info
