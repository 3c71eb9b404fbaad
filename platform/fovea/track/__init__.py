"""MLflow tracking and registry: the only package in fovea that imports mlflow."""

from fovea.track.curves import log_curves_from_run, plot_curves
from fovea.track.evaluation import log_evaluation, run_params
from fovea.track.models import download_registered_model, log_final_model
from fovea.track.registry import (
    alias_exists,
    champion_decision,
    promote_new_version,
    registered_version_of_run,
    set_alias,
)
from fovea.track.run_logger import RunLogger, fallback_file, replay_fallback
from fovea.track.store import (
    DEFAULT_TRACKING_URI,
    TRAIN_NAME_TAG,
    ensure_experiment,
    finish_run,
    resolve_tracking_uri,
    wait_for_store,
)
from fovea.track.sweep import end_trial_run, log_sweep_results, start_sweep_run, trial_run

__all__ = [
    "DEFAULT_TRACKING_URI",
    "TRAIN_NAME_TAG",
    "RunLogger",
    "alias_exists",
    "champion_decision",
    "end_trial_run",
    "log_sweep_results",
    "promote_new_version",
    "registered_version_of_run",
    "set_alias",
    "start_sweep_run",
    "trial_run",
    "ensure_experiment",
    "fallback_file",
    "finish_run",
    "download_registered_model",
    "log_curves_from_run",
    "log_final_model",
    "plot_curves",
    "replay_fallback",
    "resolve_tracking_uri",
    "wait_for_store",
    "log_evaluation",
    "run_params",
]
