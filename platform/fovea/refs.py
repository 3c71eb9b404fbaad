"""Model references: ``models:/NAME/VERSION`` and ``models:/NAME@ALIAS``. Plain text parsing, no dependencies, so
that tracking, distillation, evaluation and the command line read them the same way."""

from __future__ import annotations

import re

_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w.-]+))$")


def parse_registry_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` to ``(name, version, alias)``.

    Raises:
        ValueError: any other form.
    """
    match = _REGISTRY_URI.match(uri)
    if match is None:
        raise ValueError(f"{uri!r} is not models:/NAME/VERSION or models:/NAME@ALIAS")
    return match["name"], match["version"], match["alias"]
