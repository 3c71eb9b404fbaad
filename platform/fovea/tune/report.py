"""A sweep's results as rows: the console table, the CSV, and the plots logged to the sweep's parent run."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

OUTCOMES = ("completed", "early_stopped", "skipped", "errored", "unfinished")


def short_name(path: str) -> str:
    """``distill.tau`` -> ``tau``; ``model.kwargs.patch_size`` -> ``patch_size`` (column headers)."""
    return path.rsplit(".", 1)[-1]


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def format_table(rows: Sequence[dict[str, Any]], paths: Sequence[str], metric: str) -> str:
    """A fixed-width table of trials: id, outcome, epoch, the searched values, last and best metric."""
    header = ["trial", "status", "epoch", *(short_name(p) for p in paths), metric, f"best {metric}"]
    body = [
        [
            str(row["trial_id"]),
            str(row["outcome"]),
            format_value(row.get("epochs")),
            *(format_value(row["params"].get(p)) for p in paths),
            format_value(row.get("last")),
            format_value(row.get("best")),
        ]
        for row in rows
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in [header, *body]]
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], paths: Sequence[str], metric: str, path: Path) -> Path:
    """One line per trial: its searched values, outcome, epochs, last/best metric, MLflow run and reason."""
    fields = ["trial_id", "outcome", "epochs", *paths, f"last_{metric}", f"best_{metric}", "mlflow_run_id", "reason"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields)
        for row in rows:
            writer.writerow(
                [
                    row["trial_id"],
                    row["outcome"],
                    row.get("epochs"),
                    *(row["params"].get(p) for p in paths),
                    row.get("last"),
                    row.get("best"),
                    row.get("run_id") or "",
                    row.get("reason", ""),
                ]
            )
    return path


def _scored(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("last") is not None and math.isfinite(r["last"])]


def plot_objective(rows: Sequence[dict[str, Any]], path: str, metric: str, numeric: bool) -> Any:
    """The final metric of every scored trial against one searched value; early-stopped trials hollow."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 4), dpi=100)
    ax = figure.subplots()
    scored = _scored(rows)
    if numeric:
        position = {}
    else:
        labels = sorted({str(r["params"].get(path)) for r in scored})
        position = {label: i for i, label in enumerate(labels)}
        ax.set_xticks(range(len(labels)), labels)
    for outcome, style in (("completed", {"color": "C0"}), ("early_stopped", {"facecolors": "none", "color": "C1"})):
        chosen = [r for r in scored if r["outcome"] == outcome]
        if not chosen:
            continue
        xs = [r["params"].get(path) if numeric else position[str(r["params"].get(path))] for r in chosen]
        ax.scatter(xs, [r["last"] for r in chosen], label=outcome.replace("_", " "), **style)
    ax.set_xlabel(path)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against {path}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best")
    figure.tight_layout()
    return figure


def plot_map(rows: Sequence[dict[str, Any]], x_path: str, y_path: str, metric: str, marker_path: str = "") -> Any:
    """Two searched values as a map, each trial a point coloured (and labelled) by its final metric.

    For distillation this is the τ-λ map; ``marker_path`` (``distill.type``) gives soft and hard their own marker.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 5), dpi=100)
    ax = figure.subplots()
    scored = _scored(rows)
    kinds = sorted({str(r["params"].get(marker_path)) for r in scored}) if marker_path else [""]
    markers = "os^Dv<>"
    low = min((r["last"] for r in scored), default=0.0)
    high = max((r["last"] for r in scored), default=1.0)
    points = None
    for index, kind in enumerate(kinds):
        chosen = [r for r in scored if not marker_path or str(r["params"].get(marker_path)) == kind]
        points = ax.scatter(
            [r["params"].get(x_path) for r in chosen],
            [r["params"].get(y_path) for r in chosen],
            c=[r["last"] for r in chosen],
            vmin=low,
            vmax=high if high > low else low + 1,
            cmap="viridis",
            marker=markers[index % len(markers)],
            s=80,
            edgecolors="black",
            label=f"{short_name(marker_path)}={kind}" if marker_path else None,
        )
        for r in chosen:
            ax.annotate(f"{r['last']:.1f}", (r["params"].get(x_path), r["params"].get(y_path)), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")  # fmt: skip
    if points is not None:
        figure.colorbar(points, ax=ax, label=metric)
    for row in rows:
        if row["outcome"] == "skipped" and row["params"].get(x_path) is not None:
            ax.scatter([row["params"][x_path]], [row["params"].get(y_path)], marker="x", color="grey")
    ax.set_xlabel(x_path)
    ax.set_ylabel(y_path)
    ax.set_title(f"{metric} over {short_name(x_path)} and {short_name(y_path)}")
    if marker_path and ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best")
    figure.tight_layout()
    return figure


def map_axes(paths: Sequence[str], numeric: dict[str, bool]) -> tuple[str, str, str] | None:
    """Which two searched values to map (τ and λ first), and which categorical one picks the marker."""
    if "distill.tau" in paths and "distill.alpha" in paths:
        x, y = "distill.tau", "distill.alpha"
    else:
        numbers = [p for p in paths if numeric[p]]
        if len(numbers) < 2:
            return None
        x, y = numbers[0], numbers[1]
    categorical = [p for p in paths if not numeric[p] and p not in (x, y)]
    return x, y, categorical[0] if categorical else ""


def map_file_name(x_path: str, y_path: str) -> str:
    if (x_path, y_path) == ("distill.tau", "distill.alpha"):
        return "tau_lambda_map.png"
    return f"map_{short_name(x_path)}_{short_name(y_path)}.png"
