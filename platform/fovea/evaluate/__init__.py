"""Scoring a model on a prepared dataset: view-averaged logits shared with training's validation (``scoring``), the
scoring loop (``score``) and the evaluation job (``job``, behind ``jobs/evaluate.py``)."""
