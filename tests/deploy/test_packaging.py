"""Packaging guards: platform/ is only a source root, so the stdlib `platform` module stays importable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_platform_folder_has_no_init():
    assert (ROOT / "platform" / "fovea" / "__init__.py").is_file()
    assert not (ROOT / "platform" / "__init__.py").exists(), "platform/__init__.py would shadow the stdlib module"


def test_stdlib_platform_survives_importing_fovea_torch_and_ray():
    code = (
        "import fovea, fovea.models, torch, ray, platform, sysconfig, os;"
        "assert platform.__file__.startswith(sysconfig.get_paths()['stdlib']), platform.__file__;"
        "print(platform.system(), fovea.__file__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "platform/fovea/__init__.py" in proc.stdout


def test_pinned_versions():
    import timm
    import torch
    import torchvision

    assert torch.__version__.startswith("2.14.1") and torchvision.__version__.startswith("0.29.1")
    assert timm.__version__.startswith("1.0.")
    text = (ROOT / "pyproject.toml").read_text()
    for pin in ('"torch==2.14.1"', '"torchvision==0.29.1"', '"ray[default,train,tune,data,serve]==2.60.*"'):
        assert pin in text
