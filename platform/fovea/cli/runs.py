"""``fovea runs ...``: list, compare and sync MLflow runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fovea.cli.format import (
    Column,
    CommandError,
    format_duration,
    format_time,
    print_json,
    render_table,
    short,
    store_uri,
)

KEY_RUN_TAGS = (
    "fovea.role",
    "fovea.model",
    "fovea.dataset",
    "fovea.manifest_hash",
    "fovea.git_commit",
    "fovea.recipe_hash",
    "fovea.job",
)


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
