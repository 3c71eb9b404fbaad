"""Where fovea keeps generated data and run state on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def fovea_home() -> Path:
    """The root for generated datasets and local run storage: ``$FOVEA_HOME`` or ``~/.cache/fovea``."""
    return Path(os.environ.get("FOVEA_HOME") or Path.home() / ".cache" / "fovea").expanduser().resolve()
