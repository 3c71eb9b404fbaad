"""A job's console: noise filtered, workers' progress records drawn live or as periodic plain lines, signals turned
into one-line stops with the right exit codes, Ray start-up failures into one line, the MLflow run ended KILLED."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from fovea import console
from fovea.console import FilteredStream, ProgressRenderer, format_rate, progress_text
from fovea.train.progress import PROGRESS_MARK, StepProgress, step_progress

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(step: int, steps: int = 10, elapsed: float = 2.0, samples: int = 64) -> str:
    info = {"epoch": 1, "epochs": 3, "step": step, "steps": steps, "samples": samples, "elapsed_s": elapsed}
    return f"\x1b[36m(RayTrainWorker pid=12)\x1b[0m {PROGRESS_MARK}{json.dumps({**info, 'loss': 2.5})}\n"


def test_rates_keep_their_digits_below_one_per_second():
    assert [format_rate(r) for r in (250.4, 12.34, 3.456, 0.42, 0.0371, 0.0)] == ["250", "12.3", "3.46", "0.42",
                                                                                  "0.037", "0"]  # fmt: skip
    line = progress_text({"epoch": 2, "epochs": 5, "step": 5, "steps": 20, "samples": 4, "elapsed_s": 10.0,
                          "loss": 1.23456})  # fmt: skip
    assert line == "epoch 2/5 [#####...............] 5/20 steps | 0.4 samples/s | loss 1.2346 | ETA 30 s"


def test_noise_is_dropped_fovea_lines_pass_and_verbose_keeps_everything():
    out = io.StringIO()
    stream = FilteredStream(out, ProgressRenderer(out, live=False), verbose=False)
    stream.write("(TrainController pid=6675) [2026-12-03 E 6675 6924] core_worker.cc:2465: Actor with class name: ")
    stream.write("'PreemptionWatcher' and ID: '0d64' has constructor arguments in the object store\n")
    stream.write("Successfully registered model 'vit'.\nCreated version '1' of model 'vit'.\n")
    stream.write("/x/mlflow/pyfunc/utils/data_validation.py:187: UserWarning: \x1b[33mAdd type hints to the `predict` "
                 "method to enable data validation\x1b[0m\n  color_warning(\n")  # fmt: skip
    stream.write("(RayTrainWorker pid=7) epoch 1/2 | train loss 2.1288\nwarning: epoch 1 went without 3 rows\npartial")
    assert (
        out.getvalue() == "(RayTrainWorker pid=7) epoch 1/2 | train loss 2.1288\nwarning: epoch 1 went without 3 rows\n"
    )
    assert stream.dropped == 5 and stream.pending == "partial"
    loud = io.StringIO()
    FilteredStream(loud, ProgressRenderer(loud, live=False), verbose=True).write("Created version '1' of model 'v'.\n")
    assert loud.getvalue() == "Created version '1' of model 'v'.\n"


def test_ray_data_lines_forwarded_from_a_cluster_are_dropped_and_a_real_warning_is_kept():
    # under `ray job submit` Ray Data runs in processes the job did not start: their lines reach the driver as these
    out = io.StringIO()
    stream = FilteredStream(out, ProgressRenderer(out, live=False), verbose=False)
    forwarded = [
        "\x1b[36m(SplitCoordinator pid=6814, ip=10.0.0.2)\x1b[0m ✔️  Dataset train_0358JV_0 execution finished in 7.4 s",
        "\x1b[36m(SplitCoordinator pid=6813)\x1b[0m Progress bars disabled. To enable, set "
        "`ray.data.DataContext.get_current().enable_progress_bars = True`.",
        "(DatasetManager pid=6701) /x/ray/data/_internal/execution/interfaces/execution_options.py:436: "
        "RayDeprecationWarning: `ExecutionOptions.exclude_resources` is deprecated and will be removed",
        "(DatasetManager pid=6701)   self.exclude_resources = exclude_resources",
        "(SplitCoordinator pid=6814) ⚠️  Dataset train_0358JV_1 execution failed",  # not noise: kept
    ]
    stream.write("\n".join(forwarded) + "\n")
    assert out.getvalue() == forwarded[-1] + "\n" and stream.dropped == 4


def test_progress_is_live_on_a_terminal_and_periodic_plain_lines_elsewhere():
    screen = io.StringIO()
    live = FilteredStream(screen, ProgressRenderer(screen, live=True), verbose=False)
    live.write(_record(3))
    live.write(_record(4))
    live.write("epoch 1/3 | train loss 2.1\n")  # the epoch line clears the live line first
    text = screen.getvalue()
    assert text.count("\r") == 3 and "(RayTrainWorker" not in text
    assert text.endswith(
        "4/10 steps | 32.0 samples/s | loss 2.5000 | ETA 3 s\x1b[K\r\x1b[Kepoch 1/3 | train loss 2.1\n"
    )

    log, clock = io.StringIO(), Clock()
    plain = FilteredStream(log, ProgressRenderer(log, live=False, every_s=30.0, clock=clock), verbose=False)
    for step, now in ((1, 0.0), (2, 10.0), (3, 29.0), (4, 31.0), (5, 45.0), (6, 62.0)):
        clock.now = now
        plain.write(_record(step))
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and [line.split("] ")[1].split(" ")[0] for line in lines] == ["1/10", "4/10",
                                                                                                   "6/10"]  # fmt: skip


def test_step_progress_prints_records_now_and_then_from_rank_0_only():
    clock, lines = Clock(), []
    progress = StepProgress(epoch=2, epochs=3, steps=10, world=2, every_s=1.0, emit=lines.append, clock=clock)
    for step in range(1, 11):
        clock.now = step * 0.6
        progress.step(step, samples=16 * step, loss=float(step))
    records = [json.loads(line.removeprefix(PROGRESS_MARK)) for line in lines]
    assert [r["step"] for r in records] == [2, 4, 6, 8]  # at most one a second; none for the last step
    assert records[0] == {"epoch": 2, "epochs": 3, "step": 2, "steps": 10, "samples": 64, "elapsed_s": 1.2, "loss": 2.0}
    assert step_progress(rank=1, every_s=1.0, epoch=1, epochs=1, steps=5, world=2) is None
    assert step_progress(rank=0, every_s=0.0, epoch=1, epochs=1, steps=5, world=2) is None


def test_run_watched_hands_back_values_errors_and_signals():
    assert console.run_watched(lambda: 42) == 42
    with pytest.raises(ValueError, match="boom"):
        console.run_watched(lambda: (_ for _ in ()).throw(ValueError("boom")))
    console.stop_on_signals()
    try:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        with pytest.raises(console.Stopped) as stopped:
            console.run_watched(lambda: time.sleep(5))
        assert stopped.value.exit_code == 143 and stopped.value.name == "SIGTERM"
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _job(run, argv=("--preset", "smoke")):
    from fovea.jobs import run_command

    return run_command("train_vit", ROOT / "jobs" / "configs" / "vit", "", list(argv), check=lambda cfg: None, run=run)


def test_a_signal_or_a_ray_that_will_not_start_ends_the_job_in_one_line(capsys, monkeypatch):
    for name in ("PYTHONWARNINGS", "RAY_DATA_LOGGING_CONFIG", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
                 "MLFLOW_LOGGING_LEVEL", "RAY_DEDUP_LOGS", "RAY_TRAIN_ENABLE_PRINT_PATCH"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)  # set by the job: given back afterwards

    sent = []

    def interrupted(cfg):
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)

    assert _job(interrupted) == 130 and time.monotonic() - sent[0] < 4  # the sleep was cut short
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["train_vit: stopped by SIGINT: nothing was trained yet, or no checkpoint of it was kept"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers and streams given back
    assert not isinstance(os.sys.stdout, FilteredStream)

    import ray

    def no_ray(**kwargs):
        raise RuntimeError("The current node timed out during startup. This could happen because ...\nmore")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_ray)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")

    def start(cfg):
        from fovea.train.trainer import init_ray

        init_ray()

    assert _job(start) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "train_vit: the Ray cluster at 10.0.0.9:6379 could not be started or reached: RuntimeError: The current node "
        "timed out during startup. This could happen because ..."
    ]


def test_an_interrupted_or_failed_run_ends_killed_or_failed_with_its_reason(tmp_path):
    from mlflow.tracking import MlflowClient

    from fovea.track.store import STOP_REASON_TAG, TRAIN_NAME_TAG, end_training_run, ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = ensure_experiment(uri, "fovea")
    assert end_training_run(uri, experiment, "nothing-yet", "KILLED", "stopped by SIGINT") is None
    run = client.create_run(experiment, tags={TRAIN_NAME_TAG: "my-run"})
    client.log_metric(run.info.run_id, "epoch", 1, step=1)
    assert end_training_run(uri, experiment, "my-run", "KILLED", "stopped by SIGINT") == (run.info.run_id, 1)
    stored = client.get_run(run.info.run_id)
    assert stored.info.status == "KILLED" and stored.data.tags[STOP_REASON_TAG] == "stopped by SIGINT"
    end_training_run(uri, experiment, "my-run", "FAILED", "worker 0: ImportError: cannot import name 'x'")
    stored = client.get_run(run.info.run_id)
    assert stored.info.status == "FAILED" and stored.data.tags[STOP_REASON_TAG].endswith("cannot import name 'x'")


def test_the_stop_line_says_which_checkpoint_a_rerun_resumes_from(tmp_path):
    from fovea.train.trainer import committed_epoch

    run_dir = tmp_path / "runs" / "r"
    assert committed_epoch(str(run_dir)) == 0  # stopped before any checkpoint was recorded
    run_dir.mkdir(parents=True)
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    snapshot.write_text(json.dumps({"latest_checkpoint_result": {"metrics": {"epoch": 3}}}))
    assert committed_epoch(str(run_dir)) == 3
    snapshot.write_text(json.dumps({"latest_checkpoint_result": None}))
    assert committed_epoch(str(run_dir)) == 0
    snapshot.write_text("{not json")
    assert committed_epoch(str(run_dir)) is None
    assert committed_epoch("s3://bucket/runs/r") is None
