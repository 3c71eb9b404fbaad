"""The sweep jobs as a user runs them: Ctrl-C after the first finished trial and a rerun that does not repeat it, an
impossible Swin window skipped with its reason, the DeiT distillation sweep with a teacher it trains first, and what
each leaves in MLflow (the parent run, nested trial runs, results, plots, the registered best model)."""

from __future__ import annotations

import csv
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import mlflow_store
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.slow, pytest.mark.long]  # `pytest -m long` (minutes: not in the default run)
ROOT = Path(__file__).resolve().parents[2]


def _sweep_runs(uri: str) -> tuple[object, list[object]]:
    client = MlflowClient(uri, registry_uri=uri)  # earlier tests may have pointed MLflow's global registry elsewhere
    experiment = client.get_experiment_by_name("fovea")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("fovea.role") == "sweep"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], children


def _interrupt_after_first_trial(command: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run a sweep, press Ctrl-C once its first trial has finished; return (exit code, output, that trial's id)."""
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, first, sent = [], None, False
    try:
        for line in proc.stdout:
            lines.append(line)
            started = re.search(r"\[(\w+_\d+)\] starts", line)
            if started and first is None:
                first = started.group(1)
            if not sent and re.match(r"^trials: 1/\d+ done", line):
                proc.send_signal(signal.SIGINT)
                sent = True
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return code, "".join(lines), first


def test_window_sweep_skips_the_impossible_window_and_resumes_without_repeating(tmp_path):
    # one epoch per trial, windows 2 (fits) and 6 (does not): the test is about which trials run (CI time)
    command = [sys.executable, str(ROOT / "jobs" / "tune_window.py"), "--preset", "smoke", "train.epochs=1"]
    command.append("tune.space.model.window_size=grid(2, 6)")
    code, first_output, first_trial = _interrupt_after_first_trial(command, tmp_path)
    assert code == 130, first_output[-3000:]
    assert first_trial is not None and "interrupted" in first_output

    uri = mlflow_store(tmp_path)
    parent, children = _sweep_runs(uri)
    assert parent.info.status == "KILLED"  # an interrupted sweep registers nothing and says so
    finished = [c for c in children if c.data.tags.get("fovea.trial_id") == first_trial]
    assert len(finished) == 1 and finished[0].data.metrics["val_top1"] >= 0

    rerun = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    output = rerun.stdout + rerun.stderr
    assert "resumed: 2 trials" in output
    assert f"[{first_trial}] starts" not in output  # the finished trial is not trained again

    parent_after, children = _sweep_runs(uri)
    assert parent_after.info.run_id == parent.info.run_id and parent_after.info.status == "FINISHED"
    assert len(children) == 2  # one nested run per trial, none twice
    outcomes = {c.data.params["tune.model.window_size"]: c.data.tags["fovea.trial_outcome"] for c in children}
    assert outcomes["6"] == "skipped" and outcomes["2"] in ("completed", "early_stopped")
    skipped = next(c for c in children if c.data.params["tune.model.window_size"] == "6")
    assert "window 6 does not tile the 16x16 feature map" in skipped.data.tags["fovea.skip_reason"]
    assert "window 6 does not tile the 16x16 feature map" in output  # and the console says why

    client = MlflowClient(uri, registry_uri=uri)  # earlier tests may have pointed MLflow's global registry elsewhere
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "best_config.yaml", "plots"} <= artifacts
    plots = [a.path for a in client.list_artifacts(parent.info.run_id, "plots")]
    assert plots == ["plots/objective_vs_window_size.png"]
    rows = list(csv.DictReader(open(client.download_artifacts(parent.info.run_id, "results.csv"))))
    assert sorted(r["model.window_size"] for r in rows) == ["2", "6"]
    best = parent_after.data.tags["fovea.best_trial"]
    assert parent_after.data.metrics["best_val_top1"] == max(float(r["last_val_top1"] or -1) for r in rows
                                                             if r["outcome"] == "completed")  # fmt: skip
    champion = client.get_model_version_by_alias("swin-window-smoke", "champion")
    assert champion.tags["trial_id"] == best and champion.tags["sweep"] == parent.info.run_name


def test_distillation_sweep_trains_its_teacher_then_searches_tau_lambda(tmp_path):
    command = [
        sys.executable,
        str(ROOT / "jobs" / "tune_distill.py"),
        "--preset",
        "smoke",
        "tune.num_samples=1",  # the smoke preset's 4 trials and 3 epochs, cut for CI time
        "train.epochs=1",
        "tune.search=optuna",
    ]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "is not in the registry" in output and "teacher registered: demo-teacher-smoke version 1" in output

    uri = mlflow_store(tmp_path)
    client = MlflowClient(uri, registry_uri=uri)  # earlier tests may have pointed MLflow's global registry elsewhere
    assert str(client.get_model_version_by_alias("demo-teacher-smoke", "champion").version) == "1"
    parent, children = _sweep_runs(uri)
    assert parent.info.status == "FINISHED" and len(children) == 1
    assert parent.data.params["space.distill.tau"] == "uniform(1, 10)"
    assert parent.data.params["tune.search"] == "optuna"
    for child in children:
        assert 1 <= float(child.data.params["tune.distill.tau"]) <= 10
        assert 0 <= float(child.data.params["tune.distill.alpha"]) <= 1
        assert child.data.params["tune.distill.type"] in ("soft", "hard")
        assert child.data.params["distill.tau"] == child.data.params["tune.distill.tau"]  # the trial used it
        assert child.data.tags["fovea.teacher"] == "models:/demo-teacher-smoke@champion (version 1)"
        assert child.data.tags["fovea.early_stopped"] in ("true", "false")
        history = client.get_metric_history(child.info.run_id, "val_top1")
        assert [m.step for m in history] == list(range(1, len(history) + 1))  # one point per epoch
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {
        "plots/objective_vs_tau.png",
        "plots/objective_vs_alpha.png",
        "plots/objective_vs_type.png",
        "plots/tau_lambda_map.png",
    }
    version = client.get_model_version_by_alias("deit-distilled-smoke", "champion")
    assert version.run_id in {c.info.run_id for c in children}
    assert "best config    distill.tau=" in output
