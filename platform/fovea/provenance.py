"""Where a model came from: the source tree's git commit, recorded on every registered version."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git_commit(start: str | Path | None = None) -> str:
    """The commit of the git checkout that holds ``start`` (default: the current folder, then fovea's own source).

    ``$FOVEA_GIT_COMMIT`` wins (set it in images built without ``.git``). A checkout with uncommitted changes to
    tracked files gets ``-dirty`` appended. Returns ``unknown`` outside any checkout.
    """
    if os.environ.get("FOVEA_GIT_COMMIT"):
        return os.environ["FOVEA_GIT_COMMIT"]
    if start is not None:
        candidates = [Path(start)]
    else:
        try:
            candidates = [Path.cwd(), Path(__file__).resolve().parent]
        except FileNotFoundError:  # the current folder was deleted under us
            candidates = [Path(__file__).resolve().parent]
    for folder in candidates:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            changes = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if commit:
            return commit + ("-dirty" if changes else "")
    return "unknown"
