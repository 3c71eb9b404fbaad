"""The README's and docs' relative links lead to files of this repository (a user's clone has nothing beside it)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def test_relative_links_stay_inside_the_repository():
    listed = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True)
    documents = [ROOT / name for name in listed.stdout.split()]
    assert ROOT / "README.md" in documents
    broken = []
    for document in documents:
        for target in LINK.findall(document.read_text(encoding="utf-8", errors="replace")):
            if "://" in target or target.startswith("mailto:"):
                continue
            resolved = (document.parent / target).resolve()
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                broken.append(f"{document.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_the_cpu_only_install_pins_the_versions_the_project_does():
    """The README's CPU-only install names the torch and torchvision versions ``pyproject.toml`` pins (a CPU wheel
    ``2.14.1+cpu`` satisfies ``==2.14.1``, so ``pip install -e .`` then keeps it instead of fetching the CUDA build)."""
    from packaging.requirements import Requirement

    pins = {}
    for line in re.findall(r'^\s*"((?:torch|torchvision)\b[^"]*)"', (ROOT / "pyproject.toml").read_text(), re.M):
        requirement = Requirement(line)
        pins[requirement.name] = requirement.specifier
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines() if "download.pytorch.org/whl/cpu" in line)
    named = dict(re.findall(r"\b(torch|torchvision)==([\w.]+)", command))
    assert set(named) == set(pins) == {"torch", "torchvision"}
    for name, version in named.items():
        assert f"{version}+cpu" in pins[name], (name, version, pins[name])
    assert "--torch-backend=cpu" in readme
