"""MLflow tracking and registry: the only package in fovea that imports mlflow."""

from fovea.track.sweep import (
    alias_exists,
    champion_decision,
    end_trial_run,
    log_sweep_results,
    registered_version_of_run,
    set_alias,
    start_sweep_run,
    trial_run,
)
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
    "alias_exists",
    "champion_decision",
    "end_trial_run",
    "log_sweep_results",
    "registered_version_of_run",
    "set_alias",
    "start_sweep_run",
    "trial_run",
    "ensure_experiment",
    "finish_run",
    "load_registered_model",
    "log_final_model",
    "plot_curves",
    "resolve_tracking_uri",
]
