"""The ``fovea`` command: the model registry, runs and prepared datasets, from a terminal.

    fovea models list | show NAME | versions NAME | promote NAME VERSION [--alias A] | download REF DIR
    fovea runs list [--experiment X] [--limit N] [--filter F] | compare RUN RUN [--all] | sync FILE...
    fovea datasets list [--root DIR] | show PATH

Global options (before or after the command): ``--tracking-uri URI`` and ``--json``. Every MLflow query lives in
``fovea.track.browse``; this module parses the command line and renders tables.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import math
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from fovea.errors import first_line

ELLIPSIS = "…"
DATASET_SEARCH_DEPTH = 4
KEY_RUN_TAGS = (
    "fovea.role",
    "fovea.model",
    "fovea.dataset",
    "fovea.manifest_hash",
    "fovea.git_commit",
    "fovea.recipe_hash",
    "fovea.job",
)


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


# --- fovea models ------------------------------------------------------------------------------------------------


def models_list(args: argparse.Namespace) -> int:
    """``fovea models list``."""
    from fovea.track.browse import list_models

    uri = store_uri(args)
    rows = list_models(uri)
    if args.json:
        print_json(rows)
    elif not rows:
        print(f"no registered models in {uri}")
    else:
        columns = [
            Column("name", "name", width=40),
            Column("versions", "versions", right=True),
            Column("latest", "latest_version", right=True),
            Column("aliases", "aliases", width=40),
            Column("champion val_top1", "champion_val_top1", right=True),
            Column("updated", "updated", render=format_time),
        ]
        print(render_table(rows, columns))
    return 0


def _version_pairs(version: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("aliases", version["aliases"]),
        ("status", version["status"]),
        ("created", format_time(version["created"])),
        ("run id", version["run_id"]),
        ("source", version["source"]),
        ("description", version["description"]),
    ]


def models_show(args: argparse.Namespace) -> int:
    """``fovea models show NAME`` (or ``NAME@ALIAS`` / ``NAME/VERSION`` for that version)."""
    from fovea.track.browse import model_details, model_version

    uri = store_uri(args)
    name, version, alias = (args.name, None, None)
    if "@" in args.name or "/" in args.name:
        name, version, alias = parse_model_reference(args.name)
    details = model_details(uri, name)
    shown = details["shown"]
    if version or alias:
        details["version"] = model_version(uri, name, version=version, alias=alias)
        details["shown"] = shown = f"@{alias}" if alias else "requested"
    if args.json:
        print_json(details)
        return 0
    print(
        render_pairs(
            [
                ("name", details["name"]),
                ("description", details["description"]),
                ("tags", details["tags"]),
                ("aliases", details["aliases"]),
                ("versions", f"{details['versions']} (latest {details['latest_version'] or '-'})"),
                ("created", format_time(details["created"])),
                ("updated", format_time(details["updated"])),
            ]
        )
    )
    chosen = details["version"]
    if chosen is None:
        print("\n(no versions)")
        return 0
    label = {"champion": " (champion)", "latest": " (latest; no champion)"}.get(shown, f" ({shown})")
    print(f"\nversion {chosen['version']}{label}")
    print(render_pairs(_version_pairs(chosen), indent=2))
    if chosen["tags"]:
        print("  tags")
        print(render_pairs(sorted(chosen["tags"].items()), indent=4))
    return 0


def models_versions(args: argparse.Namespace) -> int:
    """``fovea models versions NAME``."""
    from fovea.track.browse import model_versions

    rows = model_versions(store_uri(args), args.name)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"{args.name} has no versions")
        return 0

    def tag(key: str) -> Callable[[dict[str, Any]], Any]:
        return lambda row: row["tags"].get(key)

    columns = [
        Column("version", "version", right=True),
        Column("aliases", "aliases", width=24),
        Column("created", "created", render=format_time),
        Column("val_top1", tag("val_top1"), right=True, render=format_number_text),
        Column("val_top5", tag("val_top5"), right=True, render=format_number_text),
    ]
    if any("val_mv_top1" in row["tags"] for row in rows):  # video: multi-view accuracy, the headline number
        columns.append(Column("mv_top1", tag("val_mv_top1"), right=True, render=format_number_text))
    columns += [
        Column("params", tag("params"), right=True, render=format_count),
        Column("gmacs", tag("gmacs"), right=True),
        Column("dataset", lambda row: _short_path(row["tags"].get("dataset")), width=24, keep_end=True),
        Column("manifest_hash", tag("manifest_hash"), width=16),
        Column("git_commit", tag("git_commit"), render=_short_commit),
        Column("run", "run_id", render=short(8)),
        Column("status", "status"),
    ]
    print(render_table(rows, columns))
    return 0


def _short_path(path: str | None) -> str | None:
    """The last two parts of a dataset path (``demo-images/prepared``): enough to tell datasets apart."""
    if not path:
        return None
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else path


def _short_commit(commit: Any) -> str:
    """A git commit's first 8 hex digits, keeping a ``-dirty`` mark."""
    text = format_value(commit)
    if text == "-" or text == "unknown":
        return text
    return text[:8] + ("-dirty" if text.endswith("-dirty") else "")


def models_promote(args: argparse.Namespace) -> int:
    """``fovea models promote NAME VERSION --alias ALIAS``."""
    from fovea.track.browse import promote

    if not args.version.isdigit():
        raise CommandError(f"version must be a number, got {args.version!r}")
    previous = promote(store_uri(args), args.name, args.version, args.alias, user=current_user())
    if args.json:
        print_json({"name": args.name, "alias": args.alias, "version": args.version, "previous": previous})
    else:
        unchanged = " (unchanged)" if previous == args.version else ""
        print(f"{args.name}@{args.alias}: version {previous or 'none'} -> {args.version}{unchanged}")
    return 0


def _clear_download(directory: Path, force: bool) -> None:
    """Make room for a download in ``directory``: refuse to overwrite an earlier one unless ``force``."""
    from fovea.checkpoints import CHECKSUM_SUFFIX
    from fovea.models.bundle import INFO_FILE, WEIGHTS_FILE

    names = ("mlflow_model", WEIGHTS_FILE, WEIGHTS_FILE + CHECKSUM_SUFFIX, INFO_FILE)
    earlier = [directory / name for name in names if (directory / name).exists()]
    if earlier and not force:
        raise CommandError(f"{directory} already holds a downloaded model ({earlier[0].name}); --force replaces it")
    for path in earlier:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def bundle_info(info: dict[str, Any], version: dict[str, Any]) -> dict[str, Any]:
    """What ``fovea_model.json`` records: how to rebuild the model (``model_name``, ``create_kwargs``), its inputs
    (classes, mean, std, img_size, and for video the clip sampling) and where it came from in the registry.

    ``info`` is what ``load_registered_model`` read from the version's pickle-free copy, which always records
    ``model_name`` and ``create_kwargs``.
    """
    model_name, create_kwargs, classes = info["model_name"], info["create_kwargs"], info.get("classes")
    img_size = info.get("img_size") or create_kwargs.get("img_size")
    video = {key: info[key] for key in ("num_frames", "frame_interval", "sampling") if key in info}
    return {
        "model_name": model_name,
        "create_kwargs": create_kwargs,
        "classes": classes,
        "mean": info.get("mean"),
        "std": info.get("std"),
        "img_size": img_size,
        **video,
        "registered_name": version["name"],
        "version": version["version"],
        "aliases": version["aliases"],
        "run_id": version["run_id"],
        "tags": version["tags"],
    }


def models_download(args: argparse.Namespace) -> int:
    """``fovea models download REF DIR``: the MLflow model files and a pickle-free weights copy."""
    from fovea.models import load_model_dir, save_model_dir
    from fovea.sources import load_registered_model
    from fovea.track.browse import download_model_files, model_version

    name, version, alias = parse_model_reference(args.reference)
    uri = store_uri(args)
    found = model_version(uri, name, version=version, alias=alias)  # the alias resolved once, here
    directory = Path(args.directory).expanduser().resolve()
    # the version's pickle-free copy, verified and rebuilt (a version without one is refused here, before anything
    # in DIR is touched); the pickled MLflow model is only copied, for MLflow's own tools, never loaded
    module, info = load_registered_model(f"models:/{name}/{found['version']}", uri)
    _clear_download(directory, args.force)
    mlflow_dir = download_model_files(uri, name, found["version"], directory / "mlflow_model")
    bundle = bundle_info(info, found)
    save_model_dir(directory, module, bundle)
    try:
        load_model_dir(directory)  # proves the copy rebuilds: the recorded architecture takes these weights
    except (RuntimeError, TypeError, KeyError, ValueError) as err:
        raise CommandError(f"the weights copy in {directory} does not load ({first_line(err)})") from None
    if args.json:
        print_json({"directory": str(directory), "mlflow_model": str(mlflow_dir), **bundle})
        return 0
    classes = bundle["classes"]
    arguments = ", ".join(f"{key}={value!r}" for key, value in bundle["create_kwargs"].items())
    print(f"{name} version {found['version']}{' @' + alias if alias else ''} -> {directory}")
    print(
        render_pairs(
            [
                ("mlflow_model/", "the registered MLflow model (pickled: mlflow.pytorch.load_model runs its code)"),
                ("weights.pt", "state dict, loads with torch.load(weights_only=True); its sha256 beside it"),
                (
                    "fovea_model.json",
                    f"{bundle['model_name']}({arguments}), "
                    f"{len(classes) if classes else '?'} classes, img_size {bundle['img_size']}, mean/std",
                ),
            ],
            indent=2,
        )
    )
    print("load it with:")
    print("  from fovea.models import load_model_dir")
    print(f"  model, info = load_model_dir({str(directory)!r})")
    return 0


# --- fovea runs --------------------------------------------------------------------------------------------------


def runs_list(args: argparse.Namespace) -> int:
    """``fovea runs list``."""
    from fovea.track.browse import list_runs

    if args.limit < 1:
        raise CommandError(f"--limit must be at least 1, got {args.limit}")
    rows = list_runs(store_uri(args), experiment=args.experiment, limit=args.limit, filter_string=args.filter)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no runs in experiment {args.experiment!r}" + (f" match {args.filter!r}" if args.filter else ""))
        return 0
    columns = [
        Column("run name", "run_name", width=36),
        Column("run id", "run_id", render=short(8)),
        *([Column("experiment", "experiment", width=20)] if args.experiment == "all" else []),
        Column("role", "role"),
        Column("status", "status"),
        Column("started", "start", render=format_time),
        Column("duration", "duration_s", right=True, render=format_duration),
        Column("model", "model", width=32),
        Column("epochs", "epochs", right=True),
        Column("val_top1", "val_top1", right=True),
        Column("val_top5", "val_top5", right=True),
        Column("registered", "registered_version", width=32),
    ]
    print(render_table(rows, columns))
    return 0


def compare_runs(first: dict[str, Any], second: dict[str, Any], everything: bool) -> dict[str, Any]:
    """Two runs side by side: their params (only those that differ unless ``everything``), final metrics with the
    difference ``second - first``, and fovea's key tags."""
    param_keys = sorted(set(first["params"]) | set(second["params"]))
    params = {
        key: [first["params"].get(key), second["params"].get(key)]
        for key in param_keys
        if everything or first["params"].get(key) != second["params"].get(key)
    }
    metrics = {}
    for key in sorted(set(first["metrics"]) | set(second["metrics"])):
        first_value, second_value = first["metrics"].get(key), second["metrics"].get(key)
        both = first_value is not None and second_value is not None
        metrics[key] = {
            "first": first_value,
            "second": second_value,
            "difference": second_value - first_value if both else None,
        }
    tags = {key: [first["tags"].get(key), second["tags"].get(key)] for key in KEY_RUN_TAGS}
    return {
        "runs": [{key: run[key] for key in ("run_id", "run_name", "experiment", "status")} for run in (first, second)],
        "params": params,
        "params_total": len(param_keys),
        "metrics": metrics,
        "tags": {key: values for key, values in tags.items() if any(values)},
    }


def runs_compare(args: argparse.Namespace) -> int:
    """``fovea runs compare RUN RUN``."""
    from fovea.track.browse import find_run

    uri = store_uri(args)
    first, second = (find_run(uri, reference, experiment=args.experiment) for reference in args.runs)
    comparison = compare_runs(first, second, args.all)
    if args.json:
        print_json(comparison)
        return 0
    first_header, second_header = (f"{run['run_id'][:8]} {run['run_name'] or ''}".strip() for run in (first, second))
    params = comparison["params"]
    kind = "all" if args.all else f"{len(params)} of {comparison['params_total']} differ"
    print(f"params ({kind})" if params else f"params: all {comparison['params_total']} equal")
    if params:
        param_rows = [{"param": key, "first": values[0], "second": values[1]} for key, values in params.items()]
        param_columns = [
            Column("param", "param", width=40),
            Column(first_header, "first"),
            Column(second_header, "second"),
        ]
        print(render_table(param_rows, param_columns))
    metric_rows = [{"metric": key, **values} for key, values in comparison["metrics"].items()]
    metric_columns = [
        Column("metric", "metric", width=40),
        Column(first_header, "first", right=True, render=_metric_text),
        Column(second_header, "second", right=True, render=_metric_text),
        Column("difference", "difference", right=True, render=_signed_metric_text),
    ]
    print("\nfinal metrics")
    print(render_table(metric_rows, metric_columns))
    tag_rows = [
        {"tag": key.removeprefix("fovea."), "first": values[0], "second": values[1]}
        for key, values in comparison["tags"].items()
    ]
    if tag_rows:
        tag_columns = [
            Column("tag", "tag"),
            Column(first_header, "first", width=48, keep_end=True),
            Column(second_header, "second", width=48, keep_end=True),
        ]
        print("\ntags")
        print(render_table(tag_rows, tag_columns))
    return 0


def _metric_text(value: float | None) -> str:
    """A metric with two decimals, or four significant digits when that would hide it (a learning rate)."""
    if value is None:
        return "-"
    return f"{value:.2f}" if value == 0 or abs(value) >= 0.1 else f"{value:.4g}"


def _signed_metric_text(value: float | None) -> str:
    """A difference of metrics, with its sign."""
    text = _metric_text(value)
    return text if value is None or value < 0 else "+" + text


def runs_sync(args: argparse.Namespace) -> int:
    """``fovea runs sync FILE...``: send tracking fallback files to their runs."""
    from fovea.track.browse import sync_fallback

    uri = store_uri(args) if getattr(args, "tracking_uri", None) else ""  # '' = the store recorded in each file
    results, failed = [], 0
    for path in args.files:
        try:
            sent = sync_fallback(path, uri)
        except ValueError as err:
            print(f"fovea: error: {err}", file=sys.stderr)
            failed += 1
            continue
        results.append({"file": path, **sent})
        if not args.json:
            status = f", run ended {sent['status']}" if sent["status"] else ""
            print(
                f"{path}: sent {sent['metrics']} metrics and {sent['artifacts']} artifacts to run {sent['run_id']} "
                f"at {sent['tracking_uri']}{status} (file renamed {Path(path).name}.sent)"
            )
    if args.json:
        print_json(results)
    return 2 if failed else 0


# --- fovea datasets ----------------------------------------------------------------------------------------------


def find_dataset_dirs(root: Path, max_depth: int = DATASET_SEARCH_DEPTH) -> list[Path]:
    """Folders under ``root`` (``max_depth`` levels at most) that hold a ``manifest.json``; not searched inside."""
    found: list[Path] = []

    def visit(folder: Path, depth: int) -> None:
        if (folder / "manifest.json").is_file():
            found.append(folder)
            return
        if depth >= max_depth:
            return
        try:
            with os.scandir(folder) as entries:
                children = sorted(Path(e.path) for e in entries if e.is_dir() and not e.name.startswith("."))
        except OSError:
            return
        for child in children:
            visit(child, depth + 1)

    visit(root, 0)
    return found


def dataset_summary(folder: Path) -> dict[str, Any]:
    """One prepared dataset in a few numbers (``error`` set when its manifest does not read)."""
    from fovea.data.manifest import load_manifest

    try:
        manifest = load_manifest(folder)
    except (OSError, ValueError) as err:
        return {"path": str(folder), "error": str(err)}
    return {
        "path": str(folder),
        "kind": manifest.get("kind", "image"),
        "classes": len(manifest["classes"]),
        "class_names": manifest["classes"],
        "splits": {name: split.get("count") for name, split in manifest["splits"].items()},
        "rejected": len(manifest.get("rejected", [])),
        "created": manifest.get("created"),
        "source": manifest.get("source"),
    }


def datasets_list(args: argparse.Namespace) -> int:
    """``fovea datasets list [--root DIR]``."""
    from fovea.paths import fovea_home

    root = Path(args.root).expanduser() if args.root else fovea_home() / "datasets"
    if args.root and not root.is_dir():
        raise CommandError(f"--root {args.root}: no such folder")
    rows = [dataset_summary(folder) for folder in find_dataset_dirs(root)] if root.is_dir() else []
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no prepared datasets under {root}")
        return 0

    def under_root(row: dict[str, Any]) -> str:
        path = Path(row["path"])
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

    print(f"under {root}:")
    columns = [
        Column("path", under_root, width=64, keep_end=True),
        Column("kind", lambda row: row.get("kind") or "unreadable"),
        Column("classes", "classes", right=True),
        Column("splits", "splits", width=40),
        Column("rejected", "rejected", right=True),
    ]
    print(render_table(rows, columns))
    for row in rows:
        if "error" in row:
            print(f"unreadable: {row['error']}", file=sys.stderr)
    return 0


def datasets_show(args: argparse.Namespace) -> int:
    """``fovea datasets show PATH``."""
    from fovea.data.manifest import dataset_location, describe_manifest, load_manifest, manifest_hash

    try:
        manifest = load_manifest(args.path)
        digest = manifest_hash(args.path)
    except (OSError, ValueError) as err:
        raise CommandError(str(err)) from None
    path = str(dataset_location(args.path))
    if args.json:
        print_json({"path": path, "manifest_hash": digest, **manifest})
        return 0
    print(render_pairs([("path", path), ("kind", manifest.get("kind", "image")), ("manifest hash", digest)]))
    print(describe_manifest(manifest))
    return 0


# --- the command line ----------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit code 2), as all of fovea's bad-input errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``fovea`` command line."""
    # The global options live on every parser with SUPPRESS defaults, so they work before or after the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--tracking-uri",
        default=argparse.SUPPRESS,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this folder)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="JSON on stdout instead of tables"
    )
    parser = _Parser(
        prog="fovea",
        description="Browse fovea's MLflow model registry, runs and prepared datasets.",
        parents=[common],
    )
    groups = parser.add_subparsers(metavar="{models,runs,datasets}")

    def command(
        subparsers: Any, name: str, handler: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        sub = subparsers.add_parser(name, help=help_text, description=help_text, parents=[common])
        sub.set_defaults(handler=handler)
        return sub

    def group(name: str, help_text: str) -> Any:
        group_parser = groups.add_parser(name, help=help_text, description=help_text, parents=[common])
        group_parser.set_defaults(usage_parser=group_parser)  # `fovea models` alone prints the models help
        return group_parser.add_subparsers(metavar="COMMAND")

    parser.set_defaults(usage_parser=parser)
    models = group("models", "the model registry")
    command(models, "list", models_list, "every registered model: versions, aliases, the champion's val_top1")
    show = command(models, "show", models_show, "a registered model and its champion's (else latest) version")
    show.add_argument("name", help="NAME, or NAME@ALIAS / NAME/VERSION to show that version")
    versions = command(models, "versions", models_versions, "every version of a registered model")
    versions.add_argument("name")
    promote = command(models, "promote", models_promote, "point an alias (default: champion) at a version")
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument("--alias", default="champion", help="the alias to move (default: champion)")
    download = command(
        models, "download", models_download, "write a version's MLflow model and a pickle-free weights copy to DIR"
    )
    download.add_argument("reference", metavar="REF", help="NAME@ALIAS, NAME/VERSION or models:/...")
    download.add_argument("directory", metavar="DIR")
    download.add_argument("--force", action="store_true", help="replace a model downloaded to DIR before")

    runs = group("runs", "MLflow runs")
    listing = command(runs, "list", runs_list, "the newest runs of an experiment")
    listing.add_argument("--experiment", default="fovea", help="experiment name, or 'all' (default: fovea)")
    listing.add_argument("--limit", type=int, default=50, help="the most runs shown (default: 50)")
    listing.add_argument("--filter", default="", help='MLflow filter, e.g. "metrics.val_top1 > 90"')
    compare = command(runs, "compare", runs_compare, "two runs side by side: params, final metrics, key tags")
    compare.add_argument("runs", nargs=2, metavar="RUN", help="run id, unique id prefix (6+ characters) or run name")
    compare.add_argument("--all", action="store_true", help="every param, not only those that differ")
    compare.add_argument("--experiment", default="all", help="where to look for the runs (default: all)")
    sync = command(runs, "sync", runs_sync, "send tracking fallback files (written during an outage) to their runs")
    sync.add_argument("files", nargs="+", metavar="FILE")

    datasets = group("datasets", "prepared datasets")
    dataset_list = command(datasets, "list", datasets_list, "prepared datasets under $FOVEA_HOME/datasets")
    dataset_list.add_argument("--root", default="", help="search this folder instead")
    dataset_show = command(datasets, "show", datasets_show, "a prepared dataset's manifest, in a few lines")
    dataset_show.add_argument("path", help="the dataset folder or its manifest.json")
    return parser


@contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Hold back MLflow's and alembic's INFO lines, progress bars and library warnings (noise between a command's
    output lines) while a command runs; the caller's settings come back afterwards (``main`` called from Python)."""
    settings = {"MLFLOW_LOGGING_LEVEL": "ERROR", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    saved_environment = {key: os.environ.get(key) for key in settings}
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    saved_levels = [logger.level for logger in loggers]
    for key, value in settings.items():
        os.environ.setdefault(key, value)  # MLflow reads its loggers' level from this when it is first imported
    for logger in loggers:  # and these when it already was
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for key, value in saved_environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for logger, level in zip(loggers, saved_levels, strict=True):
            logger.setLevel(level)


def _fail(message: str, code: int = 2) -> int:
    print(f"fovea: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the ``fovea`` command.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 for bad input or something not found, 1 for anything unexpected.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, or a usage error already printed
        return int(exit_request.code or 0)
    if not hasattr(args, "handler"):  # a group without its command, or nothing at all
        args.usage_parser.print_help(sys.stderr)
        return 2
    args.json = getattr(args, "json", False)
    try:
        with _quiet_libraries():
            return args.handler(args)
    except (CommandError, ValueError, FileNotFoundError) as err:
        return _fail(" ".join(str(err).split()) or type(err).__name__)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `fovea runs list | head` stopped reading: leave quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as err:  # never a traceback: one line that says what broke
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return _fail(f"{type(err).__name__}: {text}", code=1)


if __name__ == "__main__":
    sys.exit(main())
