"""Config: presets, overrides, validation messages and the job command line (no Ray needed)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from fovea.config import (
    Config,
    ConfigError,
    build_config,
    describe_fields,
    parse_job_args,
    parse_override,
    set_path,
)

ROOT = Path(__file__).resolve().parents[2]
JOBS = ["vit", "deit", "swin", "cvt", "vivit", "timesformer", "mvit"]


def test_defaults_are_valid_and_frozen():
    cfg = Config()
    assert cfg.optim.lr == 1e-3 and cfg.scaling.num_workers == 1
    with pytest.raises(ValidationError):
        cfg.optim.lr = 0.1  # type: ignore[misc]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("optim.lr=3e-4", ("optim.lr", 3e-4)),
        ("train.compile=true", ("train.compile", True)),
        ("data.crop_scale=[0.5, 1.0]", ("data.crop_scale", [0.5, 1.0])),
        ("model.window_size=null", ("model.window_size", None)),
        ("train.name=", ("train.name", "")),
        ("data.path=/data/my set", ("data.path", "/data/my set")),
        # text fields take the text as it is, whatever YAML would make of it
        ("train.name=2024", ("train.name", "2024")),
        ("train.name=2024-01-31", ("train.name", "2024-01-31")),
        ("track.experiment=v2 #3", ("track.experiment", "v2 #3")),
        ("track.registered_model_name=yes", ("track.registered_model_name", "yes")),
        ("eval.split=null", ("eval.split", "null")),
        ("model.kwargs.depth=2", ("model.kwargs.depth", 2)),  # free-form values are still read as YAML
    ],
)
def test_parse_override_reads_yaml_values(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("bad", ["optim.lr", "=3", "optim..lr=1", "optim.l-r=1"])
def test_parse_override_rejects_malformed(bad):
    with pytest.raises(ConfigError):
        parse_override(bad)


def test_layers_merge_later_wins_and_sections_merge_deeply():
    cfg = build_config([{"optim": {"lr": 0.1, "weight_decay": 0.2}}, {"optim": {"lr": 0.3}}])
    assert cfg.optim.lr == 0.3 and cfg.optim.weight_decay == 0.2


def test_unknown_key_names_the_path_and_suggests():
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown key \(did you mean optim\.lr\?\)"):
        build_config([{"optim": {"lrr": 0.1}}])


@pytest.mark.parametrize("betas", [[1.0, 0.999], [0.9, 1.5], [-0.1, 0.9]])
def test_adam_betas_outside_zero_one_are_refused(betas):
    """torch's Adam refuses them too, but only inside a worker after Ray has started."""
    with pytest.raises(ConfigError, match=r"^optim\.betas: each beta must be in \[0, 1\)"):
        build_config([{"optim": {"betas": betas}}])
    assert build_config([{"optim": {"betas": [0.0, 0.98]}}]).optim.betas == (0.0, 0.98)


def test_unknown_key_with_a_newline_stays_one_line():
    with pytest.raises(ConfigError) as err:
        build_config([{"optim": {"lr\nx": 0.1}}])
    assert str(err.value) == "optim.'lr\\nx': unknown key (did you mean optim.lr?)"


def test_bad_values_name_every_path():
    with pytest.raises(ConfigError) as err:
        build_config([{"optim": {"lr": -1}, "data": {"crop_scale": [2, 1]}, "scaling": {"num_workers": 0}}])
    message = str(err.value)
    for path in ("optim.lr", "data.crop_scale", "scaling.num_workers"):
        assert path in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("override", "path"),
    [
        ("optim.lr=inf", "optim.lr"),
        ("track.flush_timeout_s=.inf", "track.flush_timeout_s"),
        ("data.mean=[nan, 0, 0]", "data.mean.0"),
    ],
)
def test_non_finite_numbers_are_refused(override, path):
    layer: dict = {}
    set_path(layer, *parse_override(override))
    with pytest.raises(ConfigError, match=rf"^{path}: Input should be a finite number") as err:
        build_config([layer])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override", ["train.seed=-1", "train.seed=4294967296", "tune.seed=-5"])
def test_seeds_numpy_cannot_take_are_refused(override):
    """A negative seed made every training clip fail (numpy's default_rng) and be skipped; 2**32 broke Optuna."""
    layer: dict = {}
    set_path(layer, *parse_override(override))
    path = override.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"^{path}: Input should be (greater|less) than or equal to"):
        build_config([layer])
    assert build_config([{"train": {"seed": 2**32 - 1}, "tune": {"seed": 0}}]).train.seed == 2**32 - 1


@pytest.mark.parametrize(
    ("override", "count", "low", "high"),
    [("3", 3, 3, 3), ("[1, 4]", (1, 4), 1, 4), ("[2,2]", 2, 2, 2)],
)
def test_worker_count_or_elastic_range(override, count, low, high):
    _, value = parse_override(f"scaling.num_workers={override}")
    cfg = build_config([{"scaling": {"num_workers": value}}])
    scaling = cfg.scaling
    assert (scaling.num_workers, scaling.min_workers, scaling.max_workers) == (count, low, high)
    assert scaling.elastic == isinstance(count, tuple)
    # the flat params (MLflow) and a worker's copy of the config (JSON) keep it
    assert cfg.flat()["scaling.num_workers"] == (list(count) if isinstance(count, tuple) else count)
    assert Config.model_validate(cfg.model_dump(mode="json")).scaling.num_workers == count


@pytest.mark.parametrize(
    ("value", "says"),
    [([4, 1], "1 <= min <= max"), ([0, 2], "1 <= min <= max"), ([1, 2, 3], "[min, max]"), ([1.5, 2], "[min, max]")],
)
def test_bad_elastic_range_is_one_line(value, says):
    with pytest.raises(ConfigError, match=r"scaling\.num_workers") as err:
        build_config([{"scaling": {"num_workers": value}}])
    assert says in str(err.value) and "\n" not in str(err.value)


def test_distillation_needs_a_teacher():
    with pytest.raises(ConfigError, match="distill.teacher"):
        build_config([{"distill": {"type": "soft"}}])


def test_flat_lists_every_leaf():
    flat = Config().flat()
    assert flat["optim.lr"] == 1e-3 and flat["model.kwargs"] == {} and "track.experiment" in flat


def test_help_table_lists_every_field_with_default():
    table = describe_fields()
    for path in (
        "model.name",
        "data.path",
        "data.batch_size",
        "train.epochs",
        "train.name",
        "optim.lr",
        "scaling.num_workers",
        "scaling.use_gpu",
        "track.uri",
        "track.experiment",
        "track.registered_model_name",
        "distill.type",
        "distill.alpha",
        "distill.tau",
        "distill.teacher",
        "model.window_size",
        "model.pretrained",
        "model.checkpoint",
        "optim.layer_decay",
    ):
        assert f"  {path} " in table
    assert "default 0.001" in table


@pytest.mark.parametrize("job", JOBS)
@pytest.mark.parametrize("preset", ["default", "smoke"])
def test_every_job_preset_is_valid(job, preset):
    cfg = parse_job_args(f"train_{job}", ROOT / "jobs" / "configs" / job, ["--preset", preset])
    assert cfg.job == f"train_{job}"
    assert job in cfg.model.name


def test_config_file_then_overrides(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("optim:\n  lr: 0.5\ntrain:\n  epochs: 7\n")
    cfg = parse_job_args("t", ROOT / "jobs" / "configs" / "vit", ["--config", str(extra), "train.epochs=9"])
    assert cfg.optim.lr == 0.5 and cfg.train.epochs == 9


def test_unknown_preset_and_missing_file_exit_2(capsys):
    for argv in (["--preset", "nope"], ["--config", "/no/such.yaml"], ["optim.lrr=1"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_job_args("t", ROOT / "jobs" / "configs" / "vit", argv)
        assert exit_info.value.code == 2
    assert "unknown preset" in capsys.readouterr().err


def test_job_rejects_unknown_key_within_seconds():
    """Acceptance: `python jobs/train_vit.py optim.lrr=0.1` exits non-zero within seconds naming optim.lrr."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "jobs/train_vit.py", "optim.lrr=0.1"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2
    assert "optim.lrr" in proc.stderr and "did you mean optim.lr" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert elapsed < 10


def test_job_rejects_unknown_model_and_missing_dataset_before_ray(tmp_path):
    for override, needle in (
        ("model.name=vit_mikro_patch4_32", "did you mean vit_micro_patch4_32"),
        (f"data.path={tmp_path}", "no manifest.json"),
    ):
        proc = subprocess.run(
            [sys.executable, "jobs/train_vit.py", override], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 2, proc.stderr
        assert needle in proc.stderr
        assert "ray" not in proc.stdout.lower()


def test_help_lists_fields():
    proc = subprocess.run(
        [sys.executable, "jobs/train_swin.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert "model.window_size" in proc.stdout and "presets: default, smoke" in proc.stdout
