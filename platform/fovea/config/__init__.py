"""Typed run configuration: one frozen pydantic model per run, one sub-config per component.

A run's configuration is assembled in this order, later sources winning:
schema defaults < preset YAML (``jobs/configs/<job>/<preset>.yaml``) < ``--config FILE.yaml`` < ``key.path=value``
overrides on the command line. Everything is validated before Ray starts; errors name the dotted field path.

The sections and ``Config`` live in ``fovea.config.schema``; merging, parsing and the job command line in
``fovea.config.load``. This package re-exports both for callers (``from fovea.config import Config``).
"""

from fovea.config.load import (
    available_presets,
    build_config,
    describe_fields,
    load_yaml,
    parse_job_args,
    parse_override,
    set_path,
)
from fovea.config.schema import (
    FREE_FORM_FIELDS,
    MAX_SEED,
    Config,
    DataConfig,
    DistillConfig,
    EvalSection,
    ModelConfig,
    OptimConfig,
    ScalingSection,
    TrackConfig,
    TrainConfig,
    TuneSection,
    flatten,
)
from fovea.errors import ConfigError

__all__ = [
    "FREE_FORM_FIELDS",
    "MAX_SEED",
    "Config",
    "ConfigError",
    "DataConfig",
    "DistillConfig",
    "EvalSection",
    "ModelConfig",
    "OptimConfig",
    "ScalingSection",
    "TrackConfig",
    "TrainConfig",
    "TuneSection",
    "available_presets",
    "build_config",
    "describe_fields",
    "flatten",
    "load_yaml",
    "parse_job_args",
    "parse_override",
    "set_path",
]
