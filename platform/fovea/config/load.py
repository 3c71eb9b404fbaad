"""Assembling a ``Config``: merging layers (defaults < preset YAML < ``--config`` file < ``key.path=value``
overrides), one-line validation errors naming the dotted path, override and YAML parsing, the ``--help`` field
table and a job's command line (``parse_job_args``). The sections themselves live in ``schema``.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from fovea.config.schema import FREE_FORM_FIELDS, Config
from fovea.errors import ConfigError, first_line
from fovea.secrets import MARKER, is_secret_name, redact


def set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    """Set ``tree["a"]["b"]["c"] = value`` for ``path="a.b.c"``; below a free-form field (``tune.space.distill.tau``,
    ``model.kwargs.patch_size``) the rest of the path is one key."""
    for field in FREE_FORM_FIELDS:
        if path.startswith(field + ".") and len(path) > len(field) + 1:
            parts = [*field.split("."), path[len(field) + 1 :]]
            break
    else:
        parts = path.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{path}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _section_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The config section (model class) at ``loc``, e.g. ``["optim"]``; None when ``loc`` names no section."""
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _field_names_at(loc: Sequence[str | int]) -> list[str]:
    """The valid field names of the section at ``loc`` (for "did you mean" hints)."""
    section = _section_at(loc)
    return list(section.model_fields) if section else []


def _shown(value: Any, limit: int = 80) -> str:
    """A rejected value as an error line shows it: its ``repr``, cut to ``limit`` characters with its length."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _format_errors(error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        loc = [str(p) for p in err["loc"]]
        # a YAML key can hold any text: one with a newline or tab is quoted, so the message stays on one line
        path = ".".join(part if part.isprintable() else repr(part) for part in loc)
        message = err["msg"].removeprefix("Value error, ")
        if not path:  # a check of the whole config: its message names the field
            lines.append(message)
        elif err["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(loc[-1], _field_names_at(loc[:-1]), n=1)
            suggestion = f" (did you mean {'.'.join(loc[:-1] + hint)}?)" if hint else ""
            lines.append(f"{path}: unknown key{suggestion}")
        else:
            given = redact(err.get("input"), is_secret_name(path))
            lines.append(f"{path}: {message}" + ("" if isinstance(given, dict) else f" (got {_shown(given)})"))
    return "; ".join(lines)


def build_config(layers: Sequence[dict[str, Any]]) -> Config:
    """Merge config layers (later wins) and validate them into a frozen ``Config``.

    Raises:
        ConfigError: naming each offending dotted path.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _deep_merge(merged, layer)
    try:
        return Config.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=3e-4"`` to ``("optim.lr", 0.0003)``; values are read as YAML (``[1, 2]``, ``true``, ``null``),
    except that a text field takes the text as it is: ``train.name=2024``, ``track.experiment=v2 #3`` and
    ``data.path=~`` stay those strings instead of becoming a number, a date, a truncated comment or null."""
    path, sep, raw = text.partition("=")
    path = path.strip()
    parts = path.split(".")
    if not sep or not path or any(not part.isidentifier() for part in parts):
        shown = f"{path}={MARKER}" if sep else path  # the value is not repeated: it may be a secret
        raise ConfigError(f"{shown!r}: overrides look like section.field=value, e.g. optim.lr=3e-4")
    section = _section_at(parts[:-1])
    field = section.model_fields.get(parts[-1]) if section else None
    if field is not None and field.annotation is str:
        return path, raw
    return path, _parse_value(raw)


def _parse_value(raw: str) -> Any:
    # numbers first: YAML 1.1 reads "3e-4" (no dot) as a string
    for number in (int, float):
        try:
            return number(raw)
        except ValueError:
            pass
    if not raw.strip():
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


MAX_CONFIG_BYTES = 1 << 20  # a config file is a few kilobytes: a larger one is another kind of file
MAX_CONFIG_VALUES = 100_000


def _too_many_values(tree: Any, limit: int) -> bool:
    """Whether ``tree`` holds more than ``limit`` values counting every repeat (stops counting there)."""
    stack, seen = [tree], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file (a mapping of sections), with one-line errors.

    Raises:
        ConfigError: one line naming the file: missing, a folder or other non-file, unreadable, empty, larger than
            ``MAX_CONFIG_BYTES``, not UTF-8 text (a binary file), not valid YAML, or not a mapping of sections.
    """
    path = Path(path)
    try:
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        if not path.is_file():
            kind = "a folder" if path.is_dir() else "not a regular file"
            raise ConfigError(f"{path}: {kind}; a config file is YAML text")
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {size} bytes is too large for a config file; is it the right file?")
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or first_line(err)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (a binary file?); a config file is YAML text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:  # its problem and where, not the quoted line: that may hold a secret
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or first_line(err)
        raise ConfigError(f"{path}: not valid YAML ({problem}{where})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML (nested too deeply)") from None
    if _too_many_values(data, MAX_CONFIG_VALUES):  # YAML aliases can repeat a list into billions of values
        raise ConfigError(f"{path}: more than {MAX_CONFIG_VALUES} values once its aliases (*name) are expanded")
    if data is None:
        raise ConfigError(f"{path}: empty; a config file holds sections such as model:, data:, train:")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a mapping of sections (model:, data:, ...)")
    return data


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def describe_fields() -> str:
    """A table of every config field: dotted path, type, default and meaning (for ``--help``)."""
    rows = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name}.")
                continue
            default = field.get_default(call_default_factory=True)
            rows.append((f"{prefix}{name}", _type_name(annotation), repr(default), field.description or ""))

    walk(Config, "")
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"  {path:<{width}}  {desc}  [{kind}, default {default}]" for path, kind, default, desc in rows)


def available_presets(configs_dir: Path) -> list[str]:
    return sorted(p.stem for p in configs_dir.glob("*.yaml"))


def parse_job_args(
    job: str, configs_dir: str | Path, argv: Sequence[str] | None = None, description: str = ""
) -> Config:
    """Parse a job's command line into a validated ``Config``; exit 2 with a one-line message on a bad config.

    Args:
        job: the job's name, recorded in ``Config.job``.
        configs_dir: the folder of this job's preset YAML files (``default.yaml``, ``smoke.yaml``, ...).
        argv: arguments (``sys.argv[1:]`` when None).
        description: the job's one-line description for ``--help``.
    """
    configs_dir = Path(configs_dir)
    presets = available_presets(configs_dir)
    parser = argparse.ArgumentParser(
        prog=f"{Path(sys.argv[0]).name}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"presets: {', '.join(presets)}\n\nconfig fields (override as key.path=value):\n{describe_fields()}",
    )
    parser.add_argument("--preset", default="default", help=f"preset to start from ({', '.join(presets)})")
    parser.add_argument("--config", help="YAML file with config sections, applied over the preset")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides, e.g. optim.lr=3e-4")
    args = parser.parse_args(argv)
    try:
        if args.preset not in presets:
            raise ConfigError(f"--preset {args.preset}: unknown preset (have: {', '.join(presets)})")
        layers: list[dict[str, Any]] = [{"job": job}, load_yaml(configs_dir / f"{args.preset}.yaml")]
        if args.config:
            layers.append(load_yaml(args.config))
        overrides: dict[str, Any] = {}
        for text in args.overrides:
            path, value = parse_override(text)
            set_path(overrides, path, value)
        layers.append(overrides)
        return build_config(layers)
    except ConfigError as err:
        parser.exit(2, f"{parser.prog}: config error: {err}\n")
