"""MLflow tracking and registry: the only package in fovea that imports mlflow.

The names below load with their module on first use (PEP 562), so that importing one part (``fovea.track.browse``
for ``fovea runs list``, say) does not import the others: ``fovea.track.models`` brings torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fovea.lazy import lazy_exports

if TYPE_CHECKING:
    from fovea.track.curves import log_curves_from_run, plot_curves
    from fovea.track.evaluation import class_metric_keys, log_evaluation, run_params
    from fovea.track.figures import log_dataset_input, log_training_figures
    from fovea.track.models import (
        download_registered_model,
        log_final_model,
        register_imported_model,
        registered_version,
    )
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

_WHERE = {
    "log_curves_from_run": "curves",
    "plot_curves": "curves",
    "class_metric_keys": "evaluation",
    "log_evaluation": "evaluation",
    "run_params": "evaluation",
    "log_dataset_input": "figures",
    "log_training_figures": "figures",
    "download_registered_model": "models",
    "log_final_model": "models",
    "register_imported_model": "models",
    "registered_version": "models",
    "alias_exists": "registry",
    "champion_decision": "registry",
    "promote_new_version": "registry",
    "registered_version_of_run": "registry",
    "set_alias": "registry",
    "RunLogger": "run_logger",
    "fallback_file": "run_logger",
    "replay_fallback": "run_logger",
    "DEFAULT_TRACKING_URI": "store",
    "TRAIN_NAME_TAG": "store",
    "ensure_experiment": "store",
    "finish_run": "store",
    "resolve_tracking_uri": "store",
    "wait_for_store": "store",
    "end_trial_run": "sweep",
    "log_sweep_results": "sweep",
    "start_sweep_run": "sweep",
    "trial_run": "sweep",
}

__all__ = [
    "DEFAULT_TRACKING_URI",
    "RunLogger",
    "TRAIN_NAME_TAG",
    "alias_exists",
    "champion_decision",
    "class_metric_keys",
    "download_registered_model",
    "end_trial_run",
    "ensure_experiment",
    "fallback_file",
    "finish_run",
    "log_curves_from_run",
    "log_dataset_input",
    "log_evaluation",
    "log_final_model",
    "log_sweep_results",
    "log_training_figures",
    "plot_curves",
    "promote_new_version",
    "register_imported_model",
    "registered_version",
    "registered_version_of_run",
    "replay_fallback",
    "resolve_tracking_uri",
    "run_params",
    "set_alias",
    "start_sweep_run",
    "trial_run",
    "wait_for_store",
]


__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
