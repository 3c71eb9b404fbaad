"""Training: plain PyTorch steps (``loop``), the Ray Train worker function (``worker``) and driver (``trainer``)."""
