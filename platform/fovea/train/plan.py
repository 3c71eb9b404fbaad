"""What the driver hands each Ray Train worker: one frozen ``WorkerPlan`` (the run's config and what the driver
resolved: classes, row counts, tracking, the teacher, where to start and stop)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fovea.config import Config


@dataclass(frozen=True)
class WorkerPlan:
    """One run's instructions to its workers.

    Ray Train passes ``train_loop_config`` as a dict (and records it in its run state), so the plan travels as
    ``as_loop_config()`` and the worker reads it back with ``from_loop_config``: typed at both ends.
    """

    config: Any  # the Config as a JSON dict, or (when it holds secrets) a Ray object reference to that dict
    classes: tuple[str, ...]
    train_count: int
    val_count: int
    run_name: str
    tracking_uri: str | None = None  # None: tracking is off
    experiment_id: str | None = None
    run_tags: Mapping[str, str] = field(default_factory=dict)
    run_id: str | None = None  # an MLflow run to log into (a sweep's trial run) instead of the checkpoint's
    teacher: Any = None  # a Ray object reference to the loaded teacher
    teacher_source: str | None = None
    multi_view: bool = False  # the datasets include ``val_views`` (every view of each video)
    stop_at_epoch: int | None = None  # return after this epoch (PBT trains a few epochs at a time)
    progress_prefix: str = ""  # put before every progress line (which trial it is)
    initial_checkpoint: str | None = None  # a folder to start from when the run has no checkpoint of its own
    registry_uri: str | None = None  # the registry a ``models:/`` model.checkpoint is read from (absolute)
    step_progress_s: float = 0.0  # rank 0 prints a step-progress record this often (0: none; fovea.train.progress)

    def as_loop_config(self) -> dict[str, Any]:
        """The plan as ``TorchTrainer(train_loop_config=...)`` takes it (a shallow dict: references stay)."""
        return {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}

    @classmethod
    def from_loop_config(cls, loop_config: Mapping[str, Any]) -> WorkerPlan:
        """The plan back from ``train_loop_config`` (an unknown or missing key is a TypeError)."""
        return cls(**loop_config)

    def load_config(self) -> Config:
        """The run's config (fetched from the object store when it travelled there)."""
        if isinstance(self.config, dict):
            return Config.model_validate(self.config)
        import ray

        return Config.model_validate(ray.get(self.config))

    def last_epoch(self, epochs: int) -> int:
        """The epoch count this call of the workers trains up to."""
        return min(epochs, self.stop_at_epoch or epochs)
