"""fovea: train and tune transformer image and video classifiers on Ray, tracked in MLflow."""

__version__ = "0.1.0"
