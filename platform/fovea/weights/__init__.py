"""Weights files: read any format (``read``), recognise and convert the published layouts (one module per family),
load strictly with a report (``load``) and describe a file (``inspect``)."""

from fovea.weights.base import Layout, WeightsInfo, WeightsSource
from fovea.weights.inspect import file_sha256, inspect_weights
from fovea.weights.layouts import NATIVE, PUBLISHED, detect_layout
from fovea.weights.load import LoadReport, load_weights
from fovea.weights.read import read_state_dict, read_weights

__all__ = [
    "NATIVE",
    "PUBLISHED",
    "Layout",
    "LoadReport",
    "WeightsInfo",
    "WeightsSource",
    "detect_layout",
    "file_sha256",
    "inspect_weights",
    "load_weights",
    "read_state_dict",
    "read_weights",
]
