"""MLflow tracking and registry: the only package in fovea that imports mlflow."""

from fovea.track.tracking import (
    DEFAULT_TRACKING_URI,
    TRAIN_NAME_TAG,
    RunLogger,
    ensure_experiment,
    finish_run,
    load_registered_model,
    log_final_model,
    plot_curves,
    resolve_tracking_uri,
)

__all__ = [
    "DEFAULT_TRACKING_URI",
    "TRAIN_NAME_TAG",
    "RunLogger",
    "ensure_experiment",
    "finish_run",
    "load_registered_model",
    "log_final_model",
    "plot_curves",
    "resolve_tracking_uri",
]
