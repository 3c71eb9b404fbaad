"""Shared fixtures: one small Ray instance per test module, scratch FOVEA_HOME."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def ray_local():
    """A 2-CPU Ray instance shared by all tests of one module (Ray is heavy for this machine)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _scratch_home(tmp_path_factory, monkeypatch):
    """Each test gets its own FOVEA_HOME so nothing touches the user's cache."""
    home = tmp_path_factory.mktemp("fovea_home")
    monkeypatch.setenv("FOVEA_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
