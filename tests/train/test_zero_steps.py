"""A run that would take no optimizer step is a config error before training; a run that ended having learned
nothing (no step, no sample) is never registered nor promoted, for a training job and a sweep's best trial alike
(no Ray: the driver's steps around the TorchTrainer are called with stand-ins)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from fovea.config import ConfigError, build_config
from fovea.jobs import RunFailure
from fovea.train import trainer
from fovea.train.checks import check_before_start, check_optimizer_steps
from fovea.train.register import refuse_untrained, untrained
from fovea.tune.trial import trial_config


def _cfg(**sections) -> object:
    return build_config([{"track": {"enabled": False}}, sections])


def _steps_error(cfg, train_count: int) -> str:
    with pytest.raises(ConfigError) as caught:
        check_optimizer_steps(cfg, train_count)
    message = str(caught.value)
    assert "\n" not in message and "the run would take no optimizer step" in message, message
    return message


def test_a_train_split_smaller_than_one_step_is_refused_with_the_numbers():
    message = _steps_error(_cfg(data={"batch_size": 16}), 10)
    assert "data.batch_size x optim.accum_steps = 16 x 1 = 16 rows per optimizer step" in message
    assert "each of 1 worker(s) gets 10 of the 10 training rows" in message and "at most 10" in message
    message = _steps_error(_cfg(data={"batch_size": 8}, optim={"accum_steps": 4}, scaling={"num_workers": 3}), 90)
    assert "8 x 4 = 32" in message and "each of 3 worker(s) gets 30 of the 90" in message
    assert "use fewer workers (scaling.num_workers)" in message
    elastic = _cfg(data={"batch_size": 8}, scaling={"num_workers": [1, 4]})  # counted at its most workers
    assert "each of 4 worker(s) gets 7 of the 30" in _steps_error(elastic, 30)
    assert "add training data" in _steps_error(_cfg(), 0) and "at most" not in _steps_error(_cfg(), 0)
    check_optimizer_steps(_cfg(data={"batch_size": 8}, optim={"accum_steps": 2}, scaling={"num_workers": 2}), 32)


def _dataset(folder: Path, train: int, splits: tuple[str, ...] = ("train", "val")) -> Path:
    folder.mkdir(parents=True)
    counts = {"train": train, "val": 4}
    info = {name: {"count": counts[name], "shards": [f"{name}/part-00000.parquet"]} for name in splits}
    (folder / "manifest.json").write_text(json.dumps({"kind": "image", "classes": ["a", "b"], "splits": info}))
    return folder


def test_the_check_before_ray_reads_the_manifest_count(tmp_path):
    data = {"path": str(_dataset(tmp_path / "ds", train=20)), "batch_size": 32}
    with pytest.raises(ConfigError, match="gets 20 of the 20 training rows"):
        check_before_start(_cfg(data=data))
    check_before_start(_cfg(data={**data, "batch_size": 20}))
    # a sweep that searches the batch size checks each trial instead
    check_before_start(_cfg(data=data, tune={"space": {"data.batch_size": "choice(8, 64)"}}))
    base = _cfg(data=data).model_dump(mode="json")
    cfg, reason = trial_config(base, {"data.batch_size": 64}, train_count=20)
    assert cfg is None and reason.startswith("config: data.batch_size x optim.accum_steps = 64 x 1")
    assert trial_config(base, {"data.batch_size": 8}, train_count=20)[0] is not None
    no_val = _dataset(tmp_path / "no_val", train=20, splits=("train",))
    with pytest.raises(ConfigError, match="has no val split"):
        check_before_start(_cfg(data={"path": str(no_val)}))


def _stub_driver(monkeypatch, manifest: dict, state: dict) -> dict:
    """``run_training``'s Ray-side steps replaced: the manifest it finds, and a fit that ends with ``state``."""
    calls: dict = {"trainer": 0, "logged": 0}

    def build_torch_trainer(*args, **kwargs):
        calls["trainer"] += 1
        return SimpleNamespace(fit=lambda: SimpleNamespace(checkpoint="checkpoint"))

    monkeypatch.setattr(trainer, "init_ray", lambda: None)
    monkeypatch.setattr(trainer, "dataset_dir_of", lambda cfg: Path("/nowhere"))
    monkeypatch.setattr(trainer, "checked_manifest", lambda cfg, folder: manifest)
    monkeypatch.setattr(trainer, "build_datasets", lambda cfg, manifest: {})
    monkeypatch.setattr(trainer, "run_tags", lambda cfg, folder: {})
    monkeypatch.setattr(trainer, "build_torch_trainer", build_torch_trainer)
    monkeypatch.setattr(trainer, "read_state", lambda checkpoint: state)
    monkeypatch.setattr(trainer, "log_final_model_of", lambda *a, **k: calls.__setitem__("logged", 1))
    return calls


MANIFEST = {"classes": ["a", "b"], "splits": {"train": {"count": 10, "shards": []}, "val": {"count": 4}}}


def test_run_training_refuses_zero_steps_before_building_the_trainer(monkeypatch):
    calls = _stub_driver(monkeypatch, MANIFEST, {})
    with pytest.raises(ConfigError, match="16 x 1 = 16 rows per optimizer step, but each of 1 worker"):
        trainer.run_training(_cfg(data={"batch_size": 16}), checked=True)
    assert calls["trainer"] == 0


@pytest.mark.parametrize(
    "state",
    [
        {"global_step": 0, "history": json.dumps([{"epoch": 1, "train_samples": 0.0, "val_top1": 50.0}])},
        # every train row failed to decode: steps were counted, no sample was trained on
        {
            "global_step": 3,
            "history": json.dumps([{"epoch": 1, "train_samples": 0.0}, {"epoch": 2, "train_samples": 0}]),
        },
        {"global_step": 0, "history": "[]"},
    ],
    ids=["no-step", "no-sample", "no-epoch"],
)
def test_a_run_that_learned_nothing_is_not_registered(monkeypatch, state):
    calls = _stub_driver(monkeypatch, MANIFEST, state)
    cfg = _cfg(data={"batch_size": 4}, train={"name": "empty"})
    with pytest.raises(RunFailure) as caught:
        trainer.run_training(cfg, checked=True)
    message = str(caught.value)
    assert message.startswith("run empty: it took ") and "its model is not registered" in message, message
    assert "\n" not in message and calls == {"trainer": 1, "logged": 0}


def test_the_mlflow_run_of_a_run_that_learned_nothing_ends_failed(monkeypatch):
    import fovea.track
    import fovea.train.register

    ended = []
    monkeypatch.setattr(fovea.train.register, "store_is_back", lambda uri, run_id, timeout: True)
    monkeypatch.setattr(fovea.track, "finish_run", lambda uri, run_id, status="": ended.append((run_id, status)))
    cfg = build_config([{"track": {"uri": "sqlite:///unused.db"}}])
    history = [{"epoch": 1, "train_samples": 0}]
    with pytest.raises(RunFailure, match="^run r: it took 0 optimizer steps"):
        refuse_untrained(cfg, {"global_step": 0}, history, what="run r", tracking_uri="sqlite:///x", run_id="r1")
    assert ended == [("r1", "FAILED")]
    refuse_untrained(cfg, {"global_step": 5}, [{"epoch": 1, "train_samples": 80}], what="run r",
                     tracking_uri="sqlite:///x", run_id="r2")  # fmt: skip
    assert ended == [("r1", "FAILED")]  # a run that trained is left to be logged and finished


def test_what_counts_as_learning_nothing():
    trained = [{"epoch": 1, "train_samples": 64.0}]
    assert untrained({"global_step": 4}, trained) is None
    assert untrained({}, [{"epoch": 1}]) is None  # an older checkpoint's history without train_samples
    assert "took 0 optimizer steps on 64 training samples" in untrained({"global_step": 0}, trained)
    assert "took 2 optimizer steps on 0 training samples in 1 epoch(s)" in untrained(
        {"global_step": 2}, [{"epoch": 1, "train_samples": 0}]
    )
    with pytest.raises(RunFailure, match="^trial t1: it took 0"):
        refuse_untrained(_cfg(), {"global_step": 0}, trained, what="trial t1", tracking_uri=None, run_id=None)


def test_a_sweeps_best_trial_that_learned_nothing_is_not_registered(monkeypatch):
    import fovea.track
    from fovea.tune import results
    from fovea.tune.trial import SweepContext

    state = {"global_step": 0, "history": json.dumps([{"epoch": 1, "train_samples": 0, "val_top1": 60.0}])}
    logged = []
    monkeypatch.setattr(fovea.track, "registered_version_of_run", lambda uri, name, run_id: None)
    monkeypatch.setattr(trainer, "read_state", lambda path: state)
    import fovea.train.register

    monkeypatch.setattr(fovea.train.register, "log_final_model_of", lambda *a, **k: logged.append(a))
    cfg = _cfg()
    context = SweepContext(base=cfg.model_dump(mode="json"), paths=[], manifest=MANIFEST, dataset_dir="/nowhere",
                           sweep_name="s", train_storage="/nowhere", tracking_uri="sqlite:///x.db")  # fmt: skip
    summary = results.SweepSummary("s", "val_top1", [], [], {"trial_id": "t1", "params": {}, "run_id": "r1",
                                   "checkpoint_path": "/nowhere", "last": 60.0}, 1.0)  # fmt: skip
    with pytest.raises(RunFailure, match="^sweep s: best trial t1: it took 0 optimizer steps"):
        results._register_best(cfg, summary, context)
    assert logged == [] and summary.registered_version is None
