"""Ray Tune sweeps over any config field: search spaces as dotted paths, the Tuner driver, results and plots."""

from fovea.tune.space import Dimension, parse_dimension, parse_space

__all__ = ["Dimension", "parse_dimension", "parse_space"]
