"""What a sweep found: one row per trial, the best trial, the results folder (CSV, best config, plots), the sweep's
record in MLflow (through ``fovea.track``), the best model's registration, and the live trial table.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fovea.config import Config, build_config
from fovea.jobs import RunFailure
from fovea.tune.report import (
    format_table,
    format_value,
    map_axes,
    map_file_name,
    plot_map,
    plot_objective,
    short_name,
    write_csv,
)
from fovea.tune.space import Dimension, apply_values
from fovea.tune.trial import SweepContext, cli_value, trial_config


@dataclass
class SweepSummary:
    """What a finished sweep found."""

    name: str
    metric: str
    rows: list[dict[str, Any]]
    paths: list[str]
    best: dict[str, Any] | None
    wall_time_s: float
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    registered_model: str | None = None
    registered_version: str | None = None
    promotion: str = ""
    artifacts: list[str] = field(default_factory=list)
    interrupted: bool = False
    not_started: int = 0

    def describe(self) -> str:
        counts = {o: sum(r["outcome"] == o for r in self.rows) for o in {r["outcome"] for r in self.rows}}
        lines = [
            f"sweep          {self.name}: {len(self.rows)} trials ("
            + ", ".join(f"{n} {o.replace('_', ' ')}" for o, n in sorted(counts.items()))
            + f") in {self.wall_time_s:.1f} s",
            "",
            format_table(self.rows, self.paths, self.metric),
            "",
        ]
        for row in self.rows:
            if row["outcome"] in ("skipped", "errored") and row.get("reason"):
                lines.append(f"{row['trial_id']} {row['outcome']}: {row['reason']}")
        if self.interrupted:
            unfinished = sum(r["outcome"] == "unfinished" for r in self.rows)
            lines.append(
                f"interrupted    {unfinished} trials unfinished, {self.not_started} not started; rerun the same "
                f"command (or tune.name={self.name}) to resume: finished trials are kept"
            )
        elif self.best is None:
            lines.append("best           none: no trial reported " + self.metric)
        else:
            values = ", ".join(f"{p}={format_value(self.best['params'][p])}" for p in self.paths)
            score = f"{self.metric} {self.best['last']:.2f}"
            lines.append(f"best           trial {self.best['trial_id']}: {score} ({values})")
            lines.append("best config    " + " ".join(f"{p}={cli_value(self.best['params'][p])}" for p in self.paths))
        from fovea.train.register import tracking_lines

        lines += tracking_lines(self.parent_run_id, self.tracking_uri, self.registered_model, self.registered_version)
        if self.promotion:
            lines.append(f"champion       {self.promotion}")
        return "\n".join(lines)


def collect_rows(grid: Any, context: SweepContext, cfg: Config) -> list[dict[str, Any]]:
    """One row per trial: its values, outcome (completed, early_stopped, skipped, errored), epochs and metric."""
    metric = cfg.tune.metric
    rows = []
    trials = list(grid._experiment_analysis.trials)  # same order as the grid's results
    for result, trial in zip(grid, trials, strict=True):
        values = {p: trial.config.get(p) for p in context.paths}
        history = result.metrics_dataframe
        scores = [] if history is None or metric not in history else [float(v) for v in history[metric].dropna()]
        metrics = result.metrics or {}
        row: dict[str, Any] = {
            "trial_id": trial.trial_id,
            "params": values,
            "epochs": int(metrics["epoch"]) if "epoch" in metrics else None,
            "last": float(metrics[metric]) if metric in metrics else None,
            "best": None,
            "run_id": metrics.get("mlflow_run_id") or None,
            # ASHA/FIFO: the Train run's checkpoint (TuneReportCallback); PBT: the copy Tune keeps for the trial
            "checkpoint_path": metrics.get("checkpoint_path") or (result.checkpoint and result.checkpoint.path),
            "reason": "",
        }
        if row["last"] is not None:  # a PBT trial restored from a checkpoint keeps only its later history
            scores.append(row["last"])
        if scores:
            row["best"] = max(scores) if cfg.tune.mode == "max" else min(scores)
        if trial.status not in ("TERMINATED", "ERROR"):
            row["outcome"] = "unfinished"
            rows.append(row)
            continue
        if result.error is not None:
            row["outcome"] = "errored"
            row["reason"] = str(result.error).strip().splitlines()[-1][:300]
        elif row["last"] is None:
            _, reason = trial_config(context.base, values, train_count=context.manifest["splits"]["train"]["count"])
            row["outcome"], row["reason"] = ("skipped", reason) if reason else ("unfinished", "")
        elif (row["epochs"] or 0) < cfg.train.epochs:
            row["outcome"] = "early_stopped"
        else:
            row["outcome"] = "completed"
        rows.append(row)
    rows.sort(key=lambda r: str(r["trial_id"]))
    return rows


def _best(rows: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    """The best trial that trained every epoch (an early-stopped trial's score is from fewer epochs)."""
    finished = [r for r in rows if r["outcome"] == "completed" and r["last"] is not None and math.isfinite(r["last"])]
    if not finished:
        return None
    return (max if mode == "max" else min)(finished, key=lambda r: r["last"])


def finish(
    cfg: Config,
    rows: list[dict[str, Any]],
    paths: list[str],
    dimensions: list[Dimension],
    sweep_name: str,
    sweep_dir: Path,
    context: SweepContext,
    started: float,
) -> SweepSummary:
    best = _best(rows, cfg.tune.mode)
    summary = SweepSummary(
        name=sweep_name,
        metric=cfg.tune.metric,
        rows=rows,
        paths=paths,
        best=best,
        wall_time_s=time.time() - started,
        parent_run_id=context.parent_run_id,
        tracking_uri=context.tracking_uri,
    )
    results_dir = sweep_dir / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(rows, paths, cfg.tune.metric, results_dir / "results.csv")
    files = [csv_path]
    if best is not None:
        best_cfg = build_config([apply_values(context.base, best["params"])])
        best_file = results_dir / "best_config.yaml"
        import yaml

        best_file.write_text(yaml.safe_dump(best_cfg.redacted(), sort_keys=False))
        files.append(best_file)
    numeric = {d.path: d.numeric for d in dimensions}
    figures = {f"objective_vs_{short_name(p)}.png": plot_objective(rows, p, cfg.tune.metric, numeric[p]) for p in paths}
    axes = map_axes(paths, numeric)
    if axes:
        figures[map_file_name(axes[0], axes[1])] = plot_map(rows, axes[0], axes[1], cfg.tune.metric, axes[2])
    for name, figure in figures.items():
        figure.savefig(results_dir / name)
    summary.artifacts = [str(p) for p in files] + [str(results_dir / n) for n in figures]
    if context.tracking_uri and context.parent_run_id:
        _record_in_mlflow(cfg, summary, context, files, figures)
    return summary


def finish_interrupted(
    cfg: Config, rows: list[dict[str, Any]], paths: list[str], context: SweepContext, started: float, not_started: int
) -> SweepSummary:
    """The summary of a sweep stopped (Ctrl-C) before every trial ended or even began; its MLflow parent run ends as
    KILLED. Rerunning the same command resumes it."""
    summary = SweepSummary(context.sweep_name, cfg.tune.metric, rows, paths, None, time.time() - started,
                           context.parent_run_id, context.tracking_uri, interrupted=True,
                           not_started=not_started)  # fmt: skip
    if context.tracking_uri and context.parent_run_id:
        from fovea.track import finish_run

        finish_run(context.tracking_uri, context.parent_run_id, status="KILLED")
    return summary


def _record_in_mlflow(
    cfg: Config, summary: SweepSummary, context: SweepContext, files: list[Path], figures: dict[str, Any]
) -> None:
    from fovea.track import end_trial_run, finish_run, log_sweep_results

    uri, parent = context.tracking_uri, context.parent_run_id
    for row in summary.rows:
        # ASHA stops a trial right after its last report (also at max_t), before the trial could close its run
        if row["run_id"] and row["outcome"] != "skipped":
            end_trial_run(
                uri,
                row["run_id"],
                outcome=row["outcome"],
                epochs=row["epochs"],
                reason=row["reason"],
                status="FAILED" if row["outcome"] == "errored" else "FINISHED",
            )
    counts = {f"trials_{o}": float(sum(r["outcome"] == o for r in summary.rows)) for o in ("completed", "early_stopped",
              "skipped", "errored")}  # fmt: skip
    metrics = {**counts, "trials": float(len(summary.rows)), "sweep_time_s": summary.wall_time_s}
    tags = {}
    if summary.best is not None:
        metrics[f"best_{cfg.tune.metric}"] = summary.best["last"]
        tags = {"fovea.best_trial": str(summary.best["trial_id"]), "fovea.best_run_id": summary.best["run_id"] or ""}
        for path in summary.paths:
            tags[f"fovea.best.{path}"] = str(summary.best["params"][path])
    log_sweep_results(uri, parent, files=files, metrics=metrics, tags=tags, figures=figures)
    if summary.best is not None and cfg.tune.register_best and summary.best.get("checkpoint_path"):
        try:
            _register_best(cfg, summary, context)
        except RunFailure:  # the best trial learned nothing: the sweep's run ends as failed, nothing is registered
            finish_run(uri, parent, status="FAILED")
            raise
    finish_run(uri, parent)


def _register_best(cfg: Config, summary: SweepSummary, context: SweepContext) -> None:
    """Log the best trial's final model to its run, register it, and move the champion alias when it earns it."""
    from fovea.data import manifest_hash
    from fovea.track import log_sweep_results, promote_new_version, registered_version_of_run
    from fovea.train.register import log_final_model_of, refuse_untrained
    from fovea.train.trainer import read_state

    best = summary.best
    uri = context.tracking_uri
    best_cfg = build_config([apply_values(context.base, best["params"])])
    name = cfg.track.registered_model_name or best_cfg.model.name
    version = registered_version_of_run(uri, name, best["run_id"])
    if version is None:  # a rerun of a finished sweep registers nothing twice
        state = read_state(best["checkpoint_path"])
        history = json.loads(state["history"])
        what = f"sweep {summary.name}: best trial {best['trial_id']}"
        refuse_untrained(best_cfg, state, history, what=what, tracking_uri=None, run_id=None)
        _, version, _ = log_final_model_of(
            best_cfg,
            state,
            uri,
            best["run_id"],
            context.manifest["classes"],
            Path(context.dataset_dir),
            history[-1],
            promote=False,
            extra_tags={
                "sweep": summary.name,
                "trial_id": str(best["trial_id"]),
                cfg.tune.metric: f"{best['last']:.4f}",
            },
        )
    summary.registered_model, summary.registered_version = name, version
    if version is None:
        return
    _, summary.promotion = promote_new_version(
        uri,
        name,
        version,
        score=best["last"],
        metric=cfg.tune.metric,
        mode=cfg.tune.mode,
        policy=cfg.track.promote,
        champion_alias=cfg.track.champion_alias,
        challenger_alias=cfg.track.challenger_alias,
        min_delta=cfg.track.promote_min_delta,
        dataset=context.dataset_dir,
        manifest_hash=manifest_hash(context.dataset_dir),
    )
    log_sweep_results(
        uri,
        summary.parent_run_id,
        files=[],
        metrics={},
        tags={"fovea.registered_version": str(version), "fovea.promotion": summary.promotion},
        figures={},
    )


class TrialTableBase:
    """The live trial table's state and text (kept apart from Ray's ``Callback`` so it can be tested alone)."""

    def __init__(self, paths: list[str], metric: str, epochs: int, every_s: float = 30.0, mode: str = "max") -> None:
        self.paths, self.metric, self.epochs, self.every_s = paths, metric, epochs, every_s
        self.better = max if mode == "max" else min
        self.rows: dict[str, dict[str, Any]] = {}
        self._printed = 0.0

    def update(self, trial_id: str, config: dict[str, Any], result: dict[str, Any] | None, status: str) -> None:
        row = self.rows.setdefault(
            trial_id,
            {"trial_id": trial_id, "params": {p: config.get(p) for p in self.paths}, "best": None, "last": None},
        )
        row["outcome"] = status
        if result and self.metric in result:
            score = float(result[self.metric])
            row["last"], row["epochs"] = score, int(result.get("epoch", 0))
            row["best"] = score if row["best"] is None else self.better(row["best"], score)

    def render(self) -> str:
        rows = sorted(self.rows.values(), key=lambda r: r["trial_id"])
        done = sum(r["outcome"] not in ("running", "pending") for r in rows)
        table = format_table(rows, self.paths, self.metric)
        scored = [r for r in rows if r["best"] is not None]
        best = ""
        if scored:
            top = self.better(scored, key=lambda r: r["best"])
            best = f"\nbest so far: {self.metric} {top['best']:.4g} (trial {top['trial_id']})"
        return f"trials: {done}/{len(rows)} done (epochs of {self.epochs})\n{table}{best}"

    def maybe_print(self, force: bool = False) -> None:
        if force or time.time() - self._printed >= self.every_s:
            self._printed = time.time()
            print("\n" + self.render() + "\n", flush=True)


def _make_trial_table() -> type:
    from ray.tune import Callback

    class _TrialTable(TrialTableBase, Callback):
        """Prints the trial table when a trial ends and at most every ``every_s`` seconds in between."""

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.update(trial.trial_id, trial.config, None, "running")

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            self.update(trial.trial_id, trial.config, result, "running")
            self.maybe_print()

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            last = trial.last_result or {}
            if self.metric not in last:
                status = "skipped"
            elif int(last.get("epoch", 0)) < self.epochs:
                status = "stopped"
            else:
                status = "done"
            self.update(trial.trial_id, trial.config, last, status)
            self.maybe_print(force=True)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.update(trial.trial_id, trial.config, None, "errored")
            self.maybe_print(force=True)

    return _TrialTable


def TrialTable(paths: list[str], metric: str, epochs: int, mode: str = "max") -> Any:  # noqa: N802  (a factory)
    """The live trial table, a Ray Tune ``Callback`` (built on first use: importing ray.tune is slow)."""
    return _make_trial_table()(paths, metric, epochs, mode=mode)
