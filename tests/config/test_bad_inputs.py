"""Config input users really give: a boolean for a number, a run name that is a path, a binary or empty --config
file. Each is one line naming the field or the file, exit 2 on the command line (no Ray)."""

from __future__ import annotations

import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from fovea.config import Config, ConfigError, build_config, load_yaml, parse_job_args, parse_override, set_path
from fovea.config.schema import MAX_NAME_LENGTH, check_folder_name, folder_name

ROOT = Path(__file__).resolve().parents[2]
VIT_PRESETS = ROOT / "jobs" / "configs" / "vit"


def _leaves(model: type = Config, prefix: str = "") -> dict[str, typing.Any]:
    leaves = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            leaves.update(_leaves(annotation, f"{prefix}{name}."))
        else:
            leaves[f"{prefix}{name}"] = annotation
    return leaves


def _numeric(annotation: typing.Any) -> bool:
    """Whether a field holds a number (maybe or a range, or None) and never a boolean."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    args = typing.get_args(annotation) if union else (annotation,)
    return bool({int, float} & set(args)) and bool not in args


NUMBER_FIELDS = sorted(path for path, annotation in _leaves().items() if _numeric(annotation))


def _refused(*texts: str) -> str:
    layer: dict = {}
    for text in texts:
        set_path(layer, *parse_override(text))
    with pytest.raises(ConfigError) as caught:
        build_config([layer])
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_every_number_field_refuses_a_boolean():
    assert {"train.epochs", "data.batch_size", "optim.lr", "scaling.num_workers", "tune.seed"} <= set(NUMBER_FIELDS)
    assert len(NUMBER_FIELDS) > 50
    for path in NUMBER_FIELDS:
        for value in ("true", "false"):
            message = _refused(f"{path}={value}")
            assert message.startswith(f"{path}: takes a number, not true or false"), message


@pytest.mark.parametrize(
    ("override", "path"),
    [
        ("data.crop_scale=[true, 1.0]", "data.crop_scale"),
        ("data.mean=[0.5, false, 0.5]", "data.mean"),
        ("train.inject_nan_steps=[3, true]", "train.inject_nan_steps"),
        ("scaling.resources_per_worker={GPU: true}", "scaling.resources_per_worker"),
        ("scaling.num_workers=[true, 4]", "scaling.num_workers"),
        ("train.epochs=2.5", "train.epochs"),  # a fraction is no epoch count either
    ],
)
def test_booleans_inside_lists_and_fractions_are_refused(override, path):
    assert _refused(override).startswith(f"{path}: ")


def test_valid_numbers_and_booleans_still_pass():
    layer: dict = {}
    for text in ("train.epochs=3", "optim.lr=1", "train.compile=true", "model.kwargs.class_token=false",
                 "scaling.num_workers=[2, 4]", "data.mean=[0.5, 0.5, 0.5]", "track.enabled=false"):  # fmt: skip
        set_path(layer, *parse_override(text))
    cfg = build_config([layer, {"train": {"inject_nan_steps": [1, 2]}, "scaling": {"resources_per_worker": {"a": 1}}}])
    assert cfg.train.epochs == 3 and type(cfg.train.epochs) is int and cfg.optim.lr == 1.0
    assert cfg.train.compile is True and cfg.model.kwargs == {"class_token": False} and cfg.track.enabled is False
    assert cfg.scaling.num_workers == (2, 4) and cfg.scaling.resources_per_worker == {"a": 1.0}


BAD_NAMES = ["../../x", "/etc/cron.d/x", "a/b", "a" * 300, "..", "a..b", ".hidden", "-flag", "my run", "x\ny", "ü"]


@pytest.mark.parametrize("path", ["train.name", "tune.name", "tune.bootstrap_teacher", "job"])
@pytest.mark.parametrize("name", BAD_NAMES, ids=range(len(BAD_NAMES)))
def test_names_that_become_paths_are_plain_names(path, name):
    layer: dict = {}
    set_path(layer, path, name)
    with pytest.raises(ConfigError) as caught:
        build_config([layer])
    message = str(caught.value)
    assert message.startswith(f"{path}: must be a plain name") and "\n" not in message, message
    assert len(message) < 400  # a 300-character name is shown cut short


@pytest.mark.parametrize("name", ["", "run-1", "2024-01-31", "vit_micro.v2", "A" * MAX_NAME_LENGTH])
def test_plain_names_pass(name):
    cfg = build_config([{"train": {"name": name}, "tune": {"name": name}}])
    assert cfg.train.name == name and cfg.tune.name == name


@pytest.mark.parametrize("text", ["teacher-my model/v2-17", "..", "", "a..b", "ü" * 5, "x" * 300, "-a", "ok_name"])
def test_folder_name_makes_any_text_a_plain_name(text):
    name = folder_name(text)
    assert check_folder_name(name) == name and name


def test_a_bad_run_name_on_the_command_line_exits_2_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_request:
        parse_job_args("train_vit", VIT_PRESETS, ["--preset", "smoke", "train.name=../../x"])
    assert exit_request.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.name: must be a plain name" in err


# --------------------------------------------------------------------------------------------------------------------
# --config files that are not config files
# --------------------------------------------------------------------------------------------------------------------


def _nested_aliases(levels: int) -> str:
    lines = ["model:", "  kwargs:", "    l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


CONFIG_FILES = {
    "binary": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "not UTF-8 text"),
    "nul-bytes": (b"model:\n  name: vit\x00\n", "not valid YAML (unacceptable character #x0000"),
    "empty": (b"", "empty"),
    "only-comments": (b"# nothing here\n\n", "empty"),
    "bad-yaml": (b"model: {name: [\n", "not valid YAML"),
    "python-tag": (b"model: !!python/object/apply:os.system [echo]\n", "not valid YAML"),
    "a-list": (b"- model\n- data\n", "must hold a mapping of sections"),
    "too-deep": (b"[" * 5000 + b"]" * 5000, "not valid YAML"),
    "alias-bomb": (_nested_aliases(7).encode(), "once its aliases (*name) are expanded"),
    "too-large": (b"# padding\n" * 120_000, "too large for a config file"),
}


@pytest.mark.parametrize("kind", CONFIG_FILES)
def test_a_config_file_that_is_not_one_is_one_line_exit_2(tmp_path, kind, capsys):
    data, expected = CONFIG_FILES[kind]
    path = tmp_path / "run.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as caught:
        load_yaml(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message, message
    with pytest.raises(SystemExit) as exit_request:
        parse_job_args("train_vit", VIT_PRESETS, ["--preset", "smoke", "--config", str(path)])
    assert exit_request.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_a_yaml_error_does_not_quote_the_line_it_is_on(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  kwargs: {api_token: s3cr3t-Value, [\n")
    with pytest.raises(ConfigError) as caught:
        load_yaml(path)
    assert "s3cr3t" not in str(caught.value) and "at line 3, column 1" in str(caught.value)


def test_a_folder_an_unreadable_file_and_a_missing_file(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r": a folder; a config file is YAML text$"):
        load_yaml(tmp_path)
    with pytest.raises(ConfigError, match="^config file not found: "):
        load_yaml(tmp_path / "missing.yaml")
    unreadable = tmp_path / "locked.yaml"
    unreadable.write_text("model: {name: vit}\n")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)  # root reads any file: the OS's refusal is simulated
    with pytest.raises(ConfigError, match=r"locked.yaml: cannot be read \(Permission denied\)$"):
        load_yaml(unreadable)


def test_an_aliased_config_within_bounds_still_loads(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: &m {img_size: 32}\nother: *m\n")
    assert load_yaml(path) == {"model": {"img_size": 32}, "other": {"img_size": 32}}
