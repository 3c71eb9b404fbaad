"""Models: timm's registry plus fovea's own families; ``create_model`` is the front door.

Importing this package registers fovea's models in timm, so ``timm.create_model`` finds them too.
"""

from fovea.models import c3d, cvt, mvit, timesformer, tiny, vivit  # noqa: F401  (registers every family)
from fovea.models.bundle import is_model_dir, load_model_dir, save_model_dir
from fovea.models.factory import (
    check_model_name,
    count_macs,
    count_parameters,
    create_model,
    is_video_model,
    list_models,
    load_weights,
    model_statistics,
    register_video_model,
    window_fit_problem,
)

__all__ = [
    "check_model_name",
    "count_macs",
    "count_parameters",
    "create_model",
    "is_model_dir",
    "is_video_model",
    "list_models",
    "load_model_dir",
    "load_weights",
    "model_statistics",
    "register_video_model",
    "save_model_dir",
    "window_fit_problem",
]
