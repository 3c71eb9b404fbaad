"""Search spaces, sweep names, skip reasons, concurrency, the results table and plots, champion rules: no Ray."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
import torch
from helpers import mlflow_store, run_job

from fovea.config import ConfigError, build_config, parse_job_args
from fovea.models import create_model, window_fit_problem
from fovea.train.build import build_optimizer
from fovea.train.schedule import build_scheduler, restore_hyperparameters
from fovea.tune.driver import check_sweep, concurrent_trials, default_sweep_name
from fovea.tune.report import format_table, map_axes, map_file_name, plot_map, plot_objective, write_csv
from fovea.tune.results import TrialTableBase
from fovea.tune.space import apply_values, grid_size, parse_dimension, parse_space, to_param_space
from fovea.tune.trial import trial_config

ROOT = Path(__file__).resolve().parents[2]
TEACHER = {"distill": {"teacher": "models:/teacher@champion"}}


def _cfg(space: dict, **sections) -> object:
    return build_config([TEACHER, {"tune": {"space": space, **sections.pop("tune", {})}}, sections])


@pytest.mark.parametrize(
    ("spec", "kind", "args"),
    [
        ("uniform(1, 10)", "uniform", (1, 10)),
        ("loguniform(1e-4, 1e-2)", "loguniform", (1e-4, 1e-2)),  # YAML reads 1e-4 as a string: made a number
        ("randint(1, 8)", "randint", (1, 8)),
        ("quniform(0, 1, 0.1)", "quniform", (0, 1, 0.1)),
        ("qrandint(2, 16, 2)", "qrandint", (2, 16, 2)),
        ("choice(soft, hard)", "choice", ("soft", "hard")),
        ("grid(2, 4, 8)", "grid", (2, 4, 8)),
        (["soft", "hard"], "choice", ("soft", "hard")),
        ({"uniform": [0, 1]}, "uniform", (0, 1)),
    ],
)
def test_dimension_forms(spec, kind, args):
    dimension = parse_dimension("x.y", spec)
    assert (dimension.kind, dimension.args) == (kind, args)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("normal(0, 1)", "unknown distribution 'normal'"),
        ("uniform(1)", "uniform takes 2 numbers"),
        ("uniform(5, 1)", "needs low < high"),
        ("loguniform(0, 1)", "needs low > 0"),
        ("randint(1.5, 4)", "takes integers"),
        ("quniform(0, 1, 0)", "step q > 0"),
        ("choice()", "at least one value"),
        (5, "is not a distribution"),
    ],
)
def test_bad_dimensions_name_the_path(spec, message):
    with pytest.raises(ConfigError, match=rf"^tune\.space\.x\.y: .*{message}"):
        parse_dimension("x.y", spec)


def test_space_is_checked_against_the_schema():
    dims = parse_space(_cfg({"distill.tau": "uniform(1, 10)", "distill.type": "choice(soft, hard)"}))
    assert [d.path for d in dims] == ["distill.tau", "distill.type"]
    with pytest.raises(ConfigError, match=r"tune.space.distill.taux: unknown config path \(did you mean distill.tau"):
        parse_space(_cfg({"distill.taux": "uniform(1, 10)"}))
    with pytest.raises(ConfigError, match=r"distill.alpha: uniform\(0, 2\) includes 2, which the config rejects"):
        parse_space(_cfg({"distill.alpha": "uniform(0, 2)"}))
    with pytest.raises(ConfigError, match=r"includes warm, which the config rejects .*'none', 'soft' or 'hard'"):
        parse_space(_cfg({"distill.type": "choice(soft, warm)"}))
    with pytest.raises(ConfigError, match=r"randint\(0, 4\) includes 0"):
        parse_space(_cfg({"model.window_size": "randint(0, 4)"}))
    with pytest.raises(ConfigError, match="a sweep cannot vary track.uri"):
        parse_space(_cfg({"track.uri": "choice(a, b)"}))
    with pytest.raises(ConfigError, match="tune.space: nothing to search"):
        parse_space(_cfg({}))


def test_cross_field_rules_apply_to_each_value():
    # distill.type=soft needs a teacher: without one in the base config the value is rejected, naming both
    cfg = build_config([{"tune": {"space": {"distill.type": "choice(none, soft)"}}}])
    with pytest.raises(ConfigError, match="includes soft.*needs distill.teacher"):
        parse_space(cfg)


def test_search_kind_rules():
    with pytest.raises(ConfigError, match="tune.search=grid: distill.tau is a range"):
        parse_space(_cfg({"distill.tau": "uniform(1, 10)"}, tune={"search": "grid"}))
    with pytest.raises(ConfigError, match="tune.search=optuna: grid"):
        parse_space(_cfg({"model.window_size": "grid(2, 4)"}, tune={"search": "optuna"}))
    with pytest.raises(ConfigError, match="tune.scheduler=pbt copies weights"):
        parse_space(_cfg({"model.window_size": "choice(2, 4)"}, tune={"scheduler": "pbt"}))
    parse_space(_cfg({"optim.lr": "loguniform(1e-4, 1e-2)", "distill.tau": "uniform(1, 4)"}, tune={"scheduler": "pbt"}))
    with pytest.raises(ConfigError, match="tune.metric: 'accuracy' is not reported"):
        parse_space(_cfg({"distill.tau": "uniform(1, 10)"}, tune={"metric": "accuracy"}))


def test_grid_sizes_and_ray_domains():
    from ray import tune

    dims = parse_space(_cfg({"model.window_size": "grid(2, 4, 8)", "distill.type": "choice(soft, hard)"}))
    assert grid_size(dims, "random") == 3  # grid paths are crossed, choices sampled
    assert grid_size(dims, "grid") == 6  # search=grid crosses every listed path
    space = to_param_space(dims, "random")
    assert space["model.window_size"] == tune.grid_search([2, 4, 8])
    assert isinstance(space["distill.type"], tune.search.sample.Categorical)
    assert to_param_space(dims, "grid")["distill.type"] == tune.grid_search(["soft", "hard"])


def test_space_from_the_command_line_and_presets(tmp_path):
    cfg = parse_job_args(
        "tune_window",
        ROOT / "jobs" / "configs" / "tune_window",
        [
            "--preset",
            "smoke",
            "tune.search=random",
            "tune.space.model.window_size=null",
            "tune.space.optim.lr=loguniform(1e-4, 1e-2)",
        ],
    )
    assert cfg.tune.space == {"model.window_size": None, "optim.lr": "loguniform(1e-4, 1e-2)"}
    assert [d.path for d in parse_space(cfg)] == ["optim.lr"]  # null switched the preset's dimension off
    kwargs = parse_job_args("tune_window", ROOT / "jobs" / "configs" / "tune_window", ["model.kwargs.mlp_ratio=2"])
    assert kwargs.model.kwargs == {"mlp_ratio": 2}


def test_unknown_search_path_fails_before_ray_starts():
    started = time.time()
    proc = run_job("tune_distill.py", "--preset", "smoke", "tune.space.distill.tauu=uniform(1, 2)")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "tune_distill: config error: tune.space.distill.tauu: unknown config path (did you mean distill.tau?)"
    )
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    assert time.time() - started < 60


def test_every_tune_preset_is_valid():
    for job in ("tune_distill", "tune_window"):
        for preset in sorted((ROOT / "jobs" / "configs" / job).glob("*.yaml")):
            cfg = parse_job_args(job, ROOT / "jobs" / "configs" / job, ["--preset", preset.stem])
            assert parse_space(cfg), (job, preset.stem)


def test_sweep_name_follows_the_command():
    cfg = _cfg({"distill.tau": "uniform(1, 10)"}, job="tune_distill")
    same = _cfg({"distill.tau": "uniform(1, 10)"}, job="tune_distill")
    other = _cfg({"distill.tau": "uniform(1, 5)"}, job="tune_distill")
    assert default_sweep_name(cfg) == default_sweep_name(same)
    assert default_sweep_name(cfg).startswith("tune_distill-") and default_sweep_name(cfg) != default_sweep_name(other)
    named = _cfg({"distill.tau": "uniform(1, 10)"}, tune={"name": "mine"})
    assert default_sweep_name(named) == "mine"


@pytest.mark.parametrize(("window", "patch", "fits"), [(2, 2, True), (4, 2, True), (8, 4, True), (16, 2, True),
                                                        (3, 2, False), (6, 2, False), (6, 4, False)])  # fmt: skip
def test_swin_window_must_tile_every_stage(window, patch, fits):
    with torch.device("meta"):
        model = create_model(
            "swin_micro_patch2_window4_32", num_classes=8, img_size=32, window_size=window, patch_size=patch
        )
    problem = window_fit_problem(model)
    assert (problem is None) == fits, problem
    if not fits:
        side = 32 // patch
        assert f"window {window} does not tile the {side}x{side} feature map" in problem


def test_trial_config_gives_a_reason_instead_of_crashing():
    base = build_config([{"model": {"name": "swin_micro_patch2_window4_32", "img_size": 32}}]).model_dump(mode="json")
    cfg, reason = trial_config(base, {"model.window_size": 4})
    assert cfg is not None and cfg.model.window_size == 4 and reason == ""
    cfg, reason = trial_config(base, {"model.window_size": 6})
    assert cfg is None and reason.startswith("model.window_size=6: window 6 does not tile the 16x16 feature map")
    cfg, reason = trial_config(base, {"model.kwargs.depths": [2, 2, 2, 2]})  # four stages, three head counts
    assert cfg is None and reason.startswith("swin_micro_patch2_window4_32 cannot be built: IndexError")


def test_concurrency_from_cluster_resources():
    def cfg(**scaling):
        return build_config([{"scaling": scaling}])

    # one CPU per Train worker plus one for the trial's data tasks
    assert concurrent_trials(cfg(), {"CPU": 2}) == 1
    assert concurrent_trials(cfg(), {"CPU": 16}) == 8
    assert concurrent_trials(cfg(num_workers=2), {"CPU": 16}) == 5
    assert concurrent_trials(cfg(num_workers=2, use_gpu=True), {"CPU": 64, "GPU": 8}) == 4
    assert concurrent_trials(cfg(use_gpu=True), {"CPU": 64, "GPU": 1}) == 1
    assert concurrent_trials(build_config([{"tune": {"max_concurrent_trials": 3}}]), {"CPU": 2}) == 3


ROWS = [
    {"trial_id": "a_00000", "outcome": "completed", "epochs": 3, "params": {"distill.tau": 2.0, "distill.alpha": 0.5,
     "distill.type": "soft"}, "last": 60.0, "best": 62.5, "run_id": "r0", "reason": ""},
    {"trial_id": "a_00001", "outcome": "early_stopped", "epochs": 1, "params": {"distill.tau": 8.0,
     "distill.alpha": 0.9, "distill.type": "hard"}, "last": 20.0, "best": 20.0, "run_id": "r1", "reason": ""},
    {"trial_id": "a_00002", "outcome": "skipped", "epochs": None, "params": {"distill.tau": 5.0, "distill.alpha": 0.1,
     "distill.type": "soft"}, "last": None, "best": None, "run_id": None, "reason": "why"},
]  # fmt: skip
PATHS = ["distill.tau", "distill.alpha", "distill.type"]


def test_results_table_and_csv(tmp_path):
    table = format_table(ROWS, PATHS, "val_top1").splitlines()
    assert table[0].split() == ["trial", "status", "epoch", "tau", "alpha", "type", "val_top1", "best", "val_top1"]
    assert table[2].split() == ["a_00001", "early_stopped", "1", "8", "0.9", "hard", "20", "20"]
    assert table[3].split()[1:3] == ["skipped", "-"]
    rows = list(csv.DictReader(write_csv(ROWS, PATHS, "val_top1", tmp_path / "r.csv").open()))
    assert [r["outcome"] for r in rows] == ["completed", "early_stopped", "skipped"]
    assert rows[0]["distill.tau"] == "2.0" and rows[0]["last_val_top1"] == "60.0" and rows[0]["best_val_top1"] == "62.5"
    assert rows[2]["reason"] == "why" and rows[2]["last_val_top1"] == ""


def test_plots_show_every_scored_trial():
    figure = plot_objective(ROWS, "distill.tau", "val_top1", numeric=True)
    points = [c.get_offsets().tolist() for c in figure.axes[0].collections]
    assert points == [[[2.0, 60.0]], [[8.0, 20.0]]]  # completed, then early stopped (hollow); the skipped one absent
    categorical = plot_objective(ROWS, "distill.type", "val_top1", numeric=False)
    assert [t.get_text() for t in categorical.axes[0].get_xticklabels()] == ["hard", "soft"]
    axes = map_axes(PATHS, {"distill.tau": True, "distill.alpha": True, "distill.type": False})
    assert axes == ("distill.tau", "distill.alpha", "distill.type")
    assert map_file_name(*axes[:2]) == "tau_lambda_map.png"
    tau_lambda = plot_map(ROWS, *axes[:2], "val_top1", axes[2])
    scored = {tuple(map(tuple, c.get_offsets().tolist())) for c in tau_lambda.axes[0].collections}
    assert ((8.0, 0.9),) in scored and ((2.0, 0.5),) in scored and ((5.0, 0.1),) in scored  # skipped: a grey x
    assert map_axes(["model.window_size"], {"model.window_size": True}) is None


def test_live_table_tracks_trials():
    table = TrialTableBase(["distill.tau"], "val_top1", epochs=3)
    table.update("t1", {"distill.tau": 2.0}, {"val_top1": 40.0, "epoch": 1}, "running")
    table.update("t1", {"distill.tau": 2.0}, {"val_top1": 30.0, "epoch": 2}, "running")
    table.update("t2", {"distill.tau": 6.0}, None, "skipped")
    text = table.render().splitlines()
    assert text[0] == "trials: 1/2 done (epochs of 3)"
    assert text[2].split() == ["t1", "running", "2", "2", "30", "40"]  # last 30, best 40
    losses = TrialTableBase(["distill.tau"], "val_loss", epochs=3, mode="min")
    for loss in (0.9, 0.5, 0.7):
        losses.update("t1", {"distill.tau": 2.0}, {"val_loss": loss, "epoch": 1}, "running")
    assert losses.rows["t1"]["best"] == 0.5  # tune.mode=min: the lowest loss is the best


def test_champion_moves_only_when_beaten_on_the_same_dataset(tmp_path):
    from mlflow.tracking import MlflowClient

    from fovea.track import champion_decision

    uri = mlflow_store(tmp_path)
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("m")
    version = client.create_model_version("m", source="file:///nowhere", tags={"dataset": "/d", "val_top1": "70.0"})
    common = dict(dataset="/d", metric="val_top1", mode="max", policy="if_better")
    assert champion_decision(uri, "m", "champion", score=10.0, **common)[0]  # no champion yet
    client.set_registered_model_alias("m", "champion", version.version)
    better, why = champion_decision(uri, "m", "champion", score=75.0, **common)
    assert better and why == "val_top1 75.00 beats champion version 1 (70.00)"
    assert not champion_decision(uri, "m", "champion", score=65.0, **common)[0]
    assert champion_decision(uri, "m", "champion", score=99.0, version="1", **common) == (
        False,
        "version 1 is already champion",
    )
    other = champion_decision(uri, "m", "champion", score=99.0, **{**common, "dataset": "/elsewhere"})
    assert other[0] is False and "another dataset" in other[1]
    assert champion_decision(uri, "m", "champion", score=1.0, **{**common, "policy": "always"})[0]
    assert not champion_decision(uri, "m", "champion", score=99.0, **{**common, "policy": "never"})[0]
    assert champion_decision(uri, "m", "champion", score=60.0, **{**common, "mode": "min"})[0]


def test_restore_keeps_the_new_hyperparameters():
    """PBT's exploit loads another trial's optimizer state; the explored learning rate must win, at the same step."""
    model = torch.nn.Linear(4, 2)

    def build(lr, weight_decay):
        optim_cfg = build_config([{"optim": {"lr": lr, "weight_decay": weight_decay}}]).optim
        optimizer = build_optimizer(model, optim_cfg)
        return optimizer, build_scheduler(optimizer, total_steps=100, warmup_steps=10, min_lr_ratio=0.01)

    old_optimizer, old_scheduler = build(1e-3, 0.05)
    for _ in range(20):
        old_optimizer.step()
        old_scheduler.step()
    at_step_20 = old_optimizer.param_groups[0]["lr"] / 1e-3
    optimizer, scheduler = build(4e-3, 0.1)
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(old_optimizer.state_dict())
    scheduler.load_state_dict(old_scheduler.state_dict())
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * at_step_20)  # the old trial's values came back
    restore_hyperparameters(optimizer, scheduler, fresh)
    assert scheduler.last_epoch == 20
    assert optimizer.param_groups[0]["lr"] == pytest.approx(4e-3 * at_step_20)
    decays = sorted({g["weight_decay"] for g in optimizer.param_groups})
    assert decays == [0.0, 0.1]  # norms and biases keep no decay
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(4e-3 * scheduler.lr_lambdas[0](21))


def test_apply_values_sets_dotted_and_kwargs_paths():
    base = build_config([{}]).model_dump(mode="json")
    tree = apply_values(base, {"distill.tau": 3.0, "model.kwargs.patch_size": 4})
    assert tree["distill"]["tau"] == 3.0 and tree["model"]["kwargs"] == {"patch_size": 4}
    assert base["distill"]["tau"] == 1.0  # the base is left alone


def test_schedulers_and_searchers_follow_the_config():
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    from fovea.tune.driver import make_scheduler, make_search, trial_resources

    space = {"optim.lr": "loguniform(1e-4, 1e-2)"}
    asha = _cfg(space, tune={"grace_period": 2, "reduction_factor": 3}, train={"epochs": 9})
    scheduler = make_scheduler(asha, parse_space(asha))
    assert isinstance(scheduler, ASHAScheduler)
    assert scheduler._time_attr == "epoch" and scheduler._max_t == 9 and scheduler._reduction_factor == 3
    assert [milestone for milestone, _ in scheduler._brackets[0]._rungs] == [6, 2]  # rungs at epochs 2 and 6
    assert isinstance(make_scheduler(_cfg(space, tune={"scheduler": "fifo"}), []), FIFOScheduler)
    pbt = _cfg(space, tune={"scheduler": "pbt", "perturbation_interval": 3})
    assert isinstance(make_scheduler(pbt, parse_space(pbt)), PopulationBasedTraining)

    searcher, limit = make_search(asha, concurrency=2)
    assert isinstance(searcher, BasicVariantGenerator) and limit is None  # the generator holds the limit itself
    searcher, limit = make_search(_cfg(space, tune={"search": "optuna"}), concurrency=2)
    assert isinstance(searcher, OptunaSearch) and limit == 2
    assert trial_resources(asha, 1, {"CPU": 2, "memory": 8e9})["cpu"] == 0
    shares = trial_resources(pbt, 2, {"CPU": 4, "memory": 10e9})["memory"]
    assert 2 * shares <= 10e9 < 3 * shares  # two PBT trials run at once, the rest wait paused


def test_a_sweep_refuses_object_store_storage_in_one_line():
    cfg = _cfg({"distill.tau": "uniform(1, 10)"}, train={"storage_path": "s3://bucket/runs?endpoint_override=x:9000"})
    with pytest.raises(ConfigError, match=r"^train\.storage_path: s3://bucket/runs: a sweep keeps its state") as err:
        check_sweep(cfg)
    assert "\n" not in str(err.value) and "endpoint_override" not in str(err.value)


def test_elastic_trials_reserve_their_maximum():
    cfg = _cfg({"distill.tau": "uniform(1, 10)"}, scaling={"num_workers": [1, 2]})
    assert concurrent_trials(cfg, {"CPU": 8}) == 2  # (2 workers x 1 CPU + 1 for decoding) per trial
