"""Predictions from raw inputs: ``inputs`` (bytes, paths, pixel arrays to a model's evaluation views), ``predictor``
(views to top-k class names), ``batch`` (``jobs/predict.py`` on Ray Data). The registered MLflow pyfunc
(``fovea.track.pyfunc_code``) and ``fovea predict`` use them too."""
