"""Shared fixtures: one small Ray instance per test module, scratch FOVEA_HOME, ViT weights."""

from __future__ import annotations

import atexit
import os
import sys

import pytest

_HARD_EXIT: list[pytest.Session] = []


def pytest_sessionfinish(session: pytest.Session) -> None:
    """End the test process without the interpreter's teardown, with pytest's own exit status.

    After ``ray.shutdown()`` Ray's core-worker threads (gRPC, event engine, the GCS client's io thread) stay in the
    process, and decord, PyAV and TorchCodec each keep FFmpeg's thread pools: about 45 native threads are alive when
    the last test ends (counted under /proc/self/task). Tearing the interpreter and the libraries' static objects
    down under running threads can crash a process whose tests all passed (a CI run ended in SIGSEGV, exit 139,
    at about the time its last tests ran; no run here reproduced it). Every result is reported by then, so the
    process ends as soon as Python's own exit handling starts; ``FOVEA_TESTS_FULL_TEARDOWN=1`` keeps the normal
    teardown (to debug it). A crash inside a test still fails the run."""
    if os.environ.get("FOVEA_TESTS_FULL_TEARDOWN") == "1" or _HARD_EXIT:
        return
    _HARD_EXIT.append(session)  # once per process

    def _exit_now() -> None:  # the last atexit handler registered runs first
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(session.exitstatus))

    atexit.register(_exit_now)


@pytest.fixture(scope="module")
def ray_local():
    """A 2-CPU Ray instance shared by all tests of one module (Ray is heavy for this machine)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # address="local": a Ray of the tests' own even when a `ray start` cluster runs on this machine (a plain
    # ray.init() would join that one, and refuse num_cpus)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def _demo_datasets(tmp_path_factory):
    """One folder of generated demo sets for the whole session (each takes ~10 s to make)."""
    return tmp_path_factory.mktemp("demo_datasets")


@pytest.fixture(autouse=True)
def _scratch_home(request, tmp_path_factory, monkeypatch):
    """Each test gets its own FOVEA_HOME so nothing touches the user's cache.

    The end-to-end tests (marked ``slow``) share the demo sets they train on: their ``$FOVEA_HOME/datasets`` is one
    session-wide folder, so a demo set is made by the first test that needs it and read by the others."""
    home = tmp_path_factory.mktemp("fovea_home")
    if request.node.get_closest_marker("slow"):
        (home / "datasets").symlink_to(request.getfixturevalue("_demo_datasets"), target_is_directory=True)
    monkeypatch.setenv("FOVEA_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def vit_file(tmp_path_factory):
    """A random 2D ViT the size of the micro video transformers (32x32, patch 4, width 96, 4 blocks), and its saved
    weights: ``(vit, path)``. Made once; tests only read them."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(1)
    vit = VisionTransformer(img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=4, num_classes=10).eval()
    path = tmp_path_factory.mktemp("vit") / "vit.pth"
    torch.save(vit.state_dict(), path)
    return vit, path
