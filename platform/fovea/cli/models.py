"""``fovea models ...``: list, show, versions, promote and download registered models."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fovea.cli.format import (
    Column,
    CommandError,
    current_user,
    format_count,
    format_number_text,
    format_time,
    format_value,
    parse_model_reference,
    print_json,
    render_pairs,
    render_table,
    short,
    store_uri,
)
from fovea.errors import first_line


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
    from fovea.model_folder import INFO_FILE, WEIGHTS_FILE

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
