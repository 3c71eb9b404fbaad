"""Rendering for the ``fovea`` command (cell formatters, tables, label/value pairs, JSON) and the helpers every
command shares: the tracking store to read, model references, the current user and ``CommandError``."""

from __future__ import annotations

import argparse
import getpass
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ELLIPSIS = "…"


class CommandError(Exception):
    """Bad input or a missing thing: printed as one line on stderr, exit code 2."""


# --- rendering ---------------------------------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """A cell's text: ``-`` for nothing, two decimals for floats, ``k=v`` pairs for dicts, commas for lists."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.2f}"
    if isinstance(value, dict):
        return " ".join(f"{key}={format_value(item)}" for key, item in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(format_value(item) for item in value)
    return str(value)


def format_time(value: str | None) -> str:
    """An ISO 8601 time as ``YYYY-MM-DD HH:MM`` (local time, as the store's browse functions give it)."""
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return value


def format_duration(seconds: float | None) -> str:
    """``42s``, ``3m 05s`` or ``2h 01m``."""
    if seconds is None:
        return "-"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def format_count(value: Any) -> str:
    """A parameter count as ``5.72M`` or ``812.3K`` (other text as it is)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return format_value(value)
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(number) >= scale:
            return f"{number / scale:.2f}{suffix}"
    return f"{number:g}"


def format_number_text(value: Any) -> str:
    """A number stored as text (a registry tag such as ``"95.5"``) with two decimals."""
    try:
        return f"{float(value):.2f}"
    except (TypeError, ValueError):
        return format_value(value)


def short(length: int) -> Callable[[Any], str]:
    """A formatter that keeps the first ``length`` characters (ids and commits)."""

    def cut(value: Any) -> str:
        text = format_value(value)
        return text if text == "-" else text[:length]

    return cut


@dataclass(frozen=True)
class Column:
    """One table column.

    Attributes:
        header: the header text.
        key: the row's key, or a function of the row giving the cell's value.
        width: the most characters a cell shows; longer ones are cut with ``…``.
        right: right-align (numbers).
        render: turns the value into text (``format_value`` by default).
        keep_end: cut long cells at the start, not the end (paths).
    """

    header: str
    key: str | Callable[[dict[str, Any]], Any]
    width: int = 32
    right: bool = False
    render: Callable[[Any], str] = format_value
    keep_end: bool = False

    def cell(self, row: dict[str, Any]) -> str:
        """This column's text for ``row``, cut to ``width``."""
        value = self.key(row) if callable(self.key) else row.get(self.key)
        text = " ".join(self.render(value).split())  # one line per row, whatever a tag holds
        if len(text) <= self.width:
            return text
        return ELLIPSIS + text[-(self.width - 1) :] if self.keep_end else text[: self.width - 1] + ELLIPSIS


def render_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """``rows`` as aligned columns under a header row, two spaces apart."""
    cells = [[column.cell(row) for column in columns] for row in rows]
    widths = [max([len(column.header)] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)]

    def line(texts: Sequence[str]) -> str:
        parts = [
            text.rjust(width) if column.right else text.ljust(width)
            for text, width, column in zip(texts, widths, columns, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line([column.header for column in columns]), *(line(texts) for texts in cells)])


def render_pairs(pairs: Iterable[tuple[str, Any]], indent: int = 0) -> str:
    """``label  value`` lines with the values aligned (full values: nothing is cut)."""
    pairs = list(pairs)
    width = max((len(label) for label, _ in pairs), default=0)
    return "\n".join(f"{' ' * indent}{label.ljust(width)}  {format_value(value)}".rstrip() for label, value in pairs)


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout."""
    print(json.dumps(value, indent=2, default=str))


# --- shared helpers ----------------------------------------------------------------------------------------------


def store_uri(args: argparse.Namespace) -> str:
    """The tracking URI to read: ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``.

    A SQLite file (or ``file:`` folder) that does not exist is an error rather than a new, empty store.
    """
    from fovea.track import resolve_tracking_uri

    given = getattr(args, "tracking_uri", None)
    uri = resolve_tracking_uri(given or "")
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
    elif uri.startswith("file:"):
        path = Path(uri.removeprefix("file://"))
    else:
        return uri
    if path.exists():
        return uri
    if given:
        raise CommandError(f"no MLflow store at {path} (--tracking-uri {given}): it does not exist")
    if os.environ.get("MLFLOW_TRACKING_URI"):
        raise CommandError(f"no MLflow store at {path} ($MLFLOW_TRACKING_URI): it does not exist")
    raise CommandError(
        f"no MLflow store here: {path} does not exist (run fovea in the folder the jobs ran in, "
        "or pass --tracking-uri / set MLFLOW_TRACKING_URI)"
    )


def parse_model_reference(reference: str) -> tuple[str, str | None, str | None]:
    """``NAME@ALIAS``, ``NAME/VERSION`` or their ``models:/`` forms to ``(name, version, alias)``."""
    from fovea.refs import parse_registry_uri

    uri = reference if reference.startswith("models:/") else f"models:/{reference}"
    try:
        return parse_registry_uri(uri)
    except ValueError:
        raise CommandError(
            f"{reference!r} is not NAME@ALIAS, NAME/VERSION, models:/NAME@ALIAS or models:/NAME/VERSION "
            f"(e.g. {reference.removeprefix('models:/')}@champion)"
        ) from None


def current_user() -> str:
    """Who is running the command: ``$USER``, else the login name, else ``unknown``."""
    if os.environ.get("USER"):
        return os.environ["USER"]
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"
