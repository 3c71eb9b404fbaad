"""Property-based tests (hypothesis) of the logic every run leans on, over inputs no example list covers.

- Config: any valid value of a typed field survives a ``key.path=value`` override; unknown keys and out-of-range
  values fail with one line naming the dotted path; later layers win; a dumped config validates back equal.
- Clip sampling: indices in range, clips of exactly ``num_frames``, one window (dense) or one frame per equal
  segment (segment), the same for the same seed and different between seeds where the video leaves room, both in
  :mod:`fovea.data.sampling` and through :class:`fovea.data.clips.DecodeClips`.
- Manifests: write -> load gives the content back with absolute shard paths; load -> write gives the same file and
  so the same hash, wherever the folder is; any change to the content changes the hash.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types as at
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from fovea.config import (
    FREE_FORM_FIELDS,
    Config,
    ConfigError,
    DistillConfig,
    TrainConfig,
    build_config,
    load_yaml,
    parse_job_args,
    parse_override,
    set_path,
)
from fovea.data.clips import ClipSpec, DecodeClips
from fovea.data.manifest import MANIFEST_FORMAT, MANIFEST_NAME, load_manifest, manifest_hash, write_manifest
from fovea.data.sampling import dense_indices, segment_indices


def fast(examples: int = 60) -> settings:
    """Hypothesis settings that keep the whole file within seconds on a small machine."""
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------------------------------
# Config: strategies built from the schema itself, so a new field is covered without touching this file
# --------------------------------------------------------------------------------------------------------------------


def _leaves(model: type[BaseModel] = Config, prefix: str = "") -> dict[str, FieldInfo]:
    """Every leaf field of the schema by dotted path (sections walked, free-form dicts kept as one leaf)."""
    leaves: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            leaves.update(_leaves(annotation, f"{prefix}{name}."))
        else:
            leaves[f"{prefix}{name}"] = field
    return leaves


LEAVES = _leaves()
SECTIONS = sorted({path.split(".")[0] for path in LEAVES if "." in path})
# fields that depend on each other (distill.type needs distill.teacher; checkpoint and pretrained exclude each other)
DISTILL_BASE = {"distill": {"teacher": "some_teacher"}}
finite = st.floats(allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False)
ordered_pair = st.tuples(positive, positive).map(lambda pair: tuple(sorted(pair)))
worker_range = st.tuples(st.integers(1, 64), st.integers(1, 64)).filter(lambda r: r[0] < r[1])
unit_interval = st.floats(min_value=0, max_value=1, exclude_max=True)
# text that becomes a file or folder name (schema.check_folder_name), or '' for "make one up"
plain_names = st.just("") | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", fullmatch=True).filter(
    lambda name: ".." not in name
)
NAME_FIELDS = ("job", "train.name", "tune.name", "tune.bootstrap_teacher")
byte = st.integers(0, 255)
colours = (
    st.sampled_from(["white", "black", "gray"])
    | st.tuples(byte, byte, byte).map(lambda rgb: "#" + "".join(f"{c:02x}" for c in rgb))
    | st.tuples(byte, byte, byte).map(lambda rgb: ",".join(map(str, rgb)))
)
# text fields that take a format, not any text
FORMATTED_TEXT = {**dict.fromkeys(NAME_FIELDS, plain_names), "data.alpha_background": colours}
# fields whose valid values a custom validator narrows beyond what the annotation says
SPECIAL = {
    **FORMATTED_TEXT,
    "data.crop_scale": ordered_pair,
    "data.crop_ratio": ordered_pair,
    "data.scale_jitter": ordered_pair,
    "optim.betas": st.tuples(unit_interval, unit_interval),
    "scaling.num_workers": st.integers(1, 1024) | worker_range,
    "train.inject_nan_steps": st.lists(st.integers(1, 10**6), max_size=5),
}
OVERRIDABLE = sorted(path for path in LEAVES if path not in FREE_FORM_FIELDS)


def _bounds(field: FieldInfo) -> dict[str, Any]:
    """The numeric bounds pydantic enforces on a field, as hypothesis keyword arguments (plus ``multiple_of``)."""
    bounds: dict[str, Any] = {}
    for rule in field.metadata:
        if isinstance(rule, at.Ge):
            bounds["min_value"] = rule.ge
        elif isinstance(rule, at.Gt):
            bounds.update(min_value=rule.gt, exclude_min=True)
        elif isinstance(rule, at.Le):
            bounds["max_value"] = rule.le
        elif isinstance(rule, at.Lt):
            bounds.update(max_value=rule.lt, exclude_max=True)
        elif isinstance(rule, at.MultipleOf):
            bounds["multiple_of"] = rule.multiple_of
    return bounds


def _integers(field: FieldInfo) -> st.SearchStrategy[int]:
    bounds = _bounds(field)
    low = bounds.get("min_value", -(2**40)) + bool(bounds.get("exclude_min"))
    high = bounds.get("max_value", max(low, 0) + 2**40) - bool(bounds.get("exclude_max"))
    step = bounds.get("multiple_of", 1)
    return st.integers(-(-low // step), high // step).map(lambda n: n * step)


def _floats(field: FieldInfo) -> st.SearchStrategy[float]:
    bounds = {key: value for key, value in _bounds(field).items() if key != "multiple_of"}
    return st.floats(allow_nan=False, allow_infinity=False, **bounds)


def valid_values(path: str) -> st.SearchStrategy[Any]:
    """Values the schema accepts for the leaf at ``path``, read from its annotation and bounds."""
    if path in SPECIAL:
        return SPECIAL[path]
    field = LEAVES[path]

    def of(annotation: Any) -> st.SearchStrategy[Any]:
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is Literal:
            return st.sampled_from(args)
        if origin in (typing.Union, types.UnionType):
            return st.one_of(*(st.none() if arg is type(None) else of(arg) for arg in args))
        if origin is tuple:
            return st.tuples(*(of(arg) for arg in args))
        if annotation is bool:
            return st.booleans()
        if annotation is int:
            return _integers(field)
        if annotation is float:
            return _floats(field)
        if annotation is str:
            return st.text(max_size=20)
        raise NotImplementedError(f"no strategy for {path}: {annotation}")

    return of(field.annotation)


def override_text(value: Any) -> str:
    """How a user writes ``value`` after ``key.path=`` on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(override_text(item) for item in value) + "]"
    return value


def value_at(cfg: Config, path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        node = getattr(node, part)
    return node


def override_layer(*texts: str) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for text in texts:
        set_path(layer, *parse_override(text))
    return layer


@fast(400)
@given(data=st.data())
def test_any_valid_value_round_trips_through_an_override(data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(OVERRIDABLE), label="path")
    value = data.draw(valid_values(path), label="value")
    cfg = build_config([DISTILL_BASE, override_layer(f"{path}={override_text(value)}")])
    assert value_at(cfg, path) == value


@fast()
@given(
    path=st.sampled_from([p for p in OVERRIDABLE if LEAVES[p].annotation is str and p not in FORMATTED_TEXT]),
    value=st.text(max_size=30),
)
def test_text_fields_take_the_override_text_as_it_is(path: str, value: str) -> None:
    """A run named 2024, an experiment "v2 #3", a path "~": text fields are never read as numbers, dates, nulls
    or YAML comments."""
    assert value_at(build_config([override_layer(f"{path}={value}")]), path) == value


def _one_line_error_naming(layers: list[dict[str, Any]], path: str) -> str:
    with pytest.raises(ConfigError) as caught:
        build_config(layers)
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"{path}:") or message.startswith(f"{path}."), message
    return message


@fast()
@given(section=st.sampled_from(SECTIONS), key=st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True))
def test_unknown_override_keys_fail_with_one_line_naming_the_path(section: str, key: str) -> None:
    assume(key not in Config.model_fields[section].annotation.model_fields)
    message = _one_line_error_naming([override_layer(f"{section}.{key}=1")], f"{section}.{key}")
    assert message.startswith(f"{section}.{key}: unknown key")
    assume(key not in Config.model_fields)
    assert _one_line_error_naming([override_layer(f"{key}=1")], key).startswith(f"{key}: unknown key")


@fast()
@given(section=st.sampled_from(SECTIONS), key=st.text(min_size=1, max_size=12))
@example(section="optim", key="lr\nx")
@example(section="data", key="\u2028")
def test_unknown_keys_from_a_config_file_fail_with_one_line(section: str, key: str) -> None:
    """YAML keys can hold any text (spaces, newlines): the message stays one line and names the section."""
    assume(key not in Config.model_fields[section].annotation.model_fields)
    message = _one_line_error_naming([{section: {key: 1}}], section)
    assert "unknown key" in message


# invalid values of the fields whose custom validators narrow what the annotation allows
INVALID_SPECIAL = {
    "data.crop_scale": ordered_pair.filter(lambda pair: pair[0] < pair[1]).map(lambda pair: pair[::-1])
    | st.tuples(st.floats(max_value=0), positive),
    "optim.betas": st.tuples(unit_interval, st.floats(min_value=1, max_value=10) | st.floats(max_value=-1e-9)),
    "scaling.num_workers": st.integers(max_value=0) | worker_range.map(lambda pair: pair[::-1]) | st.just((0, 2)),
}


def _out_of_range(path: str) -> st.SearchStrategy[Any] | None:
    """Values just outside a numeric field's bounds, or not a multiple it must be; None for unbounded fields."""
    if path in INVALID_SPECIAL:
        return INVALID_SPECIAL[path]
    field = LEAVES[path]
    bounds = _bounds(field)
    numeric = typing.get_args(field.annotation) or (field.annotation,)
    kind = int if int in numeric else float if float in numeric else None
    if kind is None or not bounds:
        return None
    gap = st.integers(1, 10**6) if kind is int else st.floats(min_value=1e-9, max_value=1e9)

    def beyond(bound: float, sign: int, exclusive: bool) -> st.SearchStrategy[Any]:
        outside = gap.map(lambda d: bound + sign * max(d, abs(bound) * 1e-6))
        return st.just(bound) | outside if exclusive else outside

    options = []
    if "min_value" in bounds:
        options.append(beyond(bounds["min_value"], -1, bounds.get("exclude_min", False)))
    if "max_value" in bounds:
        options.append(beyond(bounds["max_value"], 1, bounds.get("exclude_max", False)))
    if "multiple_of" in bounds:
        options.append(st.integers(1, 100).map(lambda n: n * bounds["multiple_of"] + 1))
    return st.one_of(*options)


BOUNDED = sorted(path for path in OVERRIDABLE if _out_of_range(path) is not None)


@fast(200)
@given(data=st.data())
def test_out_of_range_values_fail_with_one_line_naming_the_path(data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(BOUNDED), label="path")
    value = data.draw(_out_of_range(path), label="value")
    _one_line_error_naming([DISTILL_BASE, override_layer(f"{path}={override_text(value)}")], path)


def _float_slots(annotation: Any) -> int:
    """How many floats a field holds (a float, an optional float, a tuple of floats), 0 for other fields."""
    for arg in typing.get_args(annotation) or (annotation,):
        if arg is float:
            return 1
        if typing.get_origin(arg) is tuple and float in typing.get_args(arg):
            return len(typing.get_args(arg))
    return 0


CHOICES = [path for path in OVERRIDABLE if typing.get_origin(LEAVES[path].annotation) is Literal]
FLOATS = [path for path in OVERRIDABLE if _float_slots(LEAVES[path].annotation)]


@fast()
@given(data=st.data())
def test_wrong_choices_fail_with_one_line_naming_the_path(data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(CHOICES), label="path")
    text = data.draw(st.text(max_size=10), label="text")
    assume(parse_override(f"{path}={text}")[1] not in typing.get_args(LEAVES[path].annotation))
    message = _one_line_error_naming([override_layer(f"{path}={text}")], path)
    assert "Input should be" in message


@fast()
@given(data=st.data())
def test_non_finite_and_non_numeric_floats_fail_with_one_line(data: st.DataObject) -> None:
    """A NaN or infinite learning rate, crop or Adam beta is never what anyone meant: refused before Ray starts."""
    path = data.draw(st.sampled_from(FLOATS), label="path")
    bad = data.draw(st.sampled_from(["nan", "inf", "-inf", ".nan", ".inf", "lots"]), label="bad")
    slots = _float_slots(LEAVES[path].annotation)
    position = data.draw(st.integers(0, slots - 1), label="position")
    items = ["0.5"] * slots
    items[position] = bad
    text = items[0] if slots == 1 else "[" + ", ".join(items) + "]"
    _one_line_error_naming([DISTILL_BASE, override_layer(f"{path}={text}")], path)


def test_the_schema_properties_reach_every_kind_of_field() -> None:
    """The properties above really cover the schema (a refactor cannot silently leave them testing nothing)."""
    assert {"data.batch_size", "optim.lr", "train.label_smoothing", "data.demo_video_size", "train.seed"} <= set(
        BOUNDED
    )
    assert set(INVALID_SPECIAL) <= set(BOUNDED)
    assert {"data.shuffle", "data.sampling", "track.promote"} <= set(CHOICES)
    assert {"optim.lr", "optim.betas", "data.mean", "data.crop_scale", "model.drop_rate"} <= set(FLOATS)
    assert len(BOUNDED) > 40 and len(OVERRIDABLE) > 100


# the fields the layering properties set: every plain leaf (the distill fields depend on each other)
LAYERED = [path for path in OVERRIDABLE if not path.startswith("distill.")]


def breaks_a_cross_field_rule(values: dict[str, Any]) -> bool:
    """Whether plain leaves set to ``values`` (dotted path -> value, the rest at their defaults) make a config the
    schema refuses as a whole, though each value is valid alone (test_device_decode.py tests that refusal)."""
    return values.get("data.jpeg_decode") == "device" and values.get("data.randaugment_ops", 0) > 0


@fast()
@given(data=st.data())
def test_later_layers_win_and_untouched_fields_keep_their_defaults(data: st.DataObject) -> None:
    layers, expected = [], {}
    for index in range(data.draw(st.integers(1, 4), label="layers")):
        paths = data.draw(st.lists(st.sampled_from(LAYERED), max_size=6, unique=True), label=f"paths {index}")
        layer: dict[str, Any] = {}
        for path in paths:
            value = data.draw(valid_values(path), label=path)
            set_path(layer, path, value)
            expected[path] = value
        layers.append(layer)
    assume(not breaks_a_cross_field_rule(expected))
    cfg = build_config(layers)
    default = Config()
    for path in LAYERED:
        assert value_at(cfg, path) == expected.get(path, value_at(default, path)), path


def _yaml_ready(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@fast(40)
@given(data=st.data())
def test_preset_then_config_file_then_overrides(data: st.DataObject) -> None:
    """``parse_job_args``: schema default < preset < ``--config`` file < ``key.path=value``, per field."""
    path = data.draw(st.sampled_from(LAYERED), label="path")
    given_at = data.draw(st.lists(st.booleans(), min_size=3, max_size=3), label="preset, file, override")
    values = [data.draw(valid_values(path), label=f"value {i}") for i in range(3)]
    with tempfile.TemporaryDirectory() as folder:
        presets = Path(folder) / "configs"
        presets.mkdir()
        preset, file = {}, {}
        if given_at[0]:
            set_path(preset, path, _yaml_ready(values[0]))
        (presets / "default.yaml").write_text(yaml.safe_dump(preset))
        argv = []
        if given_at[1]:
            set_path(file, path, _yaml_ready(values[1]))
            (Path(folder) / "run.yaml").write_text(yaml.safe_dump(file))
            argv += ["--config", str(Path(folder) / "run.yaml")]
        if given_at[2]:
            argv.append(f"{path}={override_text(values[2])}")
        cfg = parse_job_args("job", presets, argv)
    winners = [value for value, present in zip(values, given_at, strict=True) if present]
    default = "job" if path == "job" else value_at(Config(), path)  # parse_job_args records the job's name
    assert value_at(cfg, path) == (winners[-1] if winners else default)


json_scalars = st.none() | st.booleans() | st.integers(-(10**12), 10**12) | finite | st.text(max_size=8)
identifiers = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True)


@st.composite
def configs(draw: st.DrawFn) -> Config:
    """Any valid config: a random subset of the fields set to random valid values, free-form dicts included."""
    layer: dict[str, Any] = {}
    values = {
        path: draw(valid_values(path)) for path in draw(st.lists(st.sampled_from(LAYERED), max_size=40, unique=True))
    }
    if breaks_a_cross_field_rule(values):
        values["data.randaugment_ops"] = 0  # RandAugment runs on the CPU only
    for path, value in values.items():
        set_path(layer, path, value)
    distill = {name: draw(valid_values(f"distill.{name}")) for name in DistillConfig.model_fields}
    if distill["type"] != "none" and not distill["teacher"]:
        distill["teacher"] = "teacher_model"  # a distillation run needs a teacher
    distill["teacher_pretrained"] &= not distill["teacher_checkpoint"]  # one or the other
    layer["distill"] = distill
    layer["model"] = {**layer.get("model", {}), "kwargs": draw(st.dictionaries(identifiers, json_scalars, max_size=3))}
    layer["tune"] = {**layer.get("tune", {}), "space": draw(st.dictionaries(identifiers, st.text(max_size=12)))}
    resources = st.dictionaries(identifiers, st.floats(min_value=0, max_value=64), max_size=2)
    layer["scaling"] = {**layer.get("scaling", {}), "resources_per_worker": draw(resources)}
    return build_config([layer])


@fast(40)
@given(cfg=configs())
def test_a_dumped_config_validates_back_equal(cfg: Config) -> None:
    """What the trainer hands its workers (a JSON-mode dump), a checkpoint's JSON and a YAML file written from a
    config all give the same config back, with the same recipe hash."""
    dumped = cfg.model_dump(mode="json")
    assert Config.model_validate(dumped) == cfg
    from_json = Config.model_validate(json.loads(json.dumps(dumped, allow_nan=False)))
    assert from_json == cfg and from_json.recipe_hash() == cfg.recipe_hash()
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "config.yaml"
        file.write_text(yaml.safe_dump(dumped, sort_keys=False))
        assert build_config([load_yaml(file)]) == cfg


# --------------------------------------------------------------------------------------------------------------------
# Clip sampling
# --------------------------------------------------------------------------------------------------------------------

video_lengths = st.integers(1, 400)
clip_lengths = st.integers(1, 32)
intervals = st.integers(1, 8)
view_counts = st.integers(1, 6)
seeds = st.integers(0, 2**32 - 1)
VARIETY_SEEDS = range(32)  # seeds tried when checking that clips vary where the video leaves room


def _check_clip(clip: np.ndarray, video_frames: int, num_frames: int) -> None:
    assert clip.dtype == np.int64 and clip.shape == (num_frames,)
    assert clip.min() >= 0 and clip.max() < video_frames


def _segments(video_frames: int, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact integer bounds ``[low, high)`` of ``num_frames`` equal segments of a video."""
    index = np.arange(num_frames)
    return index * video_frames // num_frames, (index + 1) * video_frames // num_frames


def _check_dense_window(clip: np.ndarray, video_frames: int, num_frames: int, frame_interval: int) -> None:
    """One window ``frame_interval`` apart when it fits; the loop-padded window from frame 0 when it does not."""
    span = (num_frames - 1) * frame_interval + 1
    if video_frames >= span:
        assert np.all(np.diff(clip) == frame_interval)
    else:
        assert clip.tolist() == [(i * frame_interval) % video_frames for i in range(num_frames)]


def _check_segment_frames(clip: np.ndarray, video_frames: int, num_frames: int) -> None:
    """One frame inside each equal segment; the looped video when it has fewer frames than segments."""
    if video_frames >= num_frames:
        low, high = _segments(video_frames, num_frames)
        assert np.all(clip >= low) and np.all(clip < high), (clip, low, high)
    else:
        assert clip.tolist() == [i % video_frames for i in range(num_frames)]


@fast(200)
@given(video_frames=video_lengths, num_frames=clip_lengths, frame_interval=intervals, seed=seeds)
def test_dense_training_clips(video_frames: int, num_frames: int, frame_interval: int, seed: int) -> None:
    def clip(seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return dense_indices(video_frames, num_frames=num_frames, frame_interval=frame_interval, rng=rng)

    first = clip(seed)
    _check_clip(first, video_frames, num_frames)
    _check_dense_window(first, video_frames, num_frames, frame_interval)
    assert np.array_equal(clip(seed), first)
    room = video_frames - ((num_frames - 1) * frame_interval + 1)
    starts = {int(clip(other)[0]) for other in VARIETY_SEEDS}
    assert len(starts) > 1 if room > 0 else starts == {0}
    assert all(0 <= start <= max(room, 0) for start in starts)


@fast(200)
@given(video_frames=video_lengths, num_frames=clip_lengths, frame_interval=intervals, num_clips=view_counts)
def test_dense_evaluation_views(video_frames: int, num_frames: int, frame_interval: int, num_clips: int) -> None:
    def view(index: int) -> np.ndarray:
        return dense_indices(
            video_frames, num_frames=num_frames, frame_interval=frame_interval, clip_index=index, num_clips=num_clips
        )

    views = [view(index) for index in range(num_clips)]
    for index, clip in enumerate(views):
        _check_clip(clip, video_frames, num_frames)
        _check_dense_window(clip, video_frames, num_frames, frame_interval)
        assert np.array_equal(view(index), clip)
    starts = [int(clip[0]) for clip in views]
    assert starts == sorted(starts)
    room = max(0, video_frames - ((num_frames - 1) * frame_interval + 1))
    if num_clips > 1:  # the views reach from the start to the end of the video
        assert starts[0] == 0 and starts[-1] == room
    else:  # the centre window: as much video before it as after it, give or take a frame
        assert abs(starts[0] - (room - starts[0])) <= 1
    with pytest.raises(ValueError, match="clip_index"):
        view(num_clips)


@fast(200)
@given(video_frames=video_lengths, num_frames=clip_lengths, seed=seeds)
def test_segment_training_clips(video_frames: int, num_frames: int, seed: int) -> None:
    def clip(seed: int) -> np.ndarray:
        return segment_indices(video_frames, num_frames=num_frames, rng=np.random.default_rng(seed))

    first = clip(seed)
    _check_clip(first, video_frames, num_frames)
    _check_segment_frames(first, video_frames, num_frames)
    assert np.array_equal(clip(seed), first)
    distinct = {tuple(clip(other).tolist()) for other in VARIETY_SEEDS}
    assert len(distinct) > 1 if video_frames > num_frames else len(distinct) == 1


@fast(200)
@given(video_frames=video_lengths, num_frames=clip_lengths, num_clips=view_counts)
@example(video_frames=122, num_frames=14, num_clips=1)  # float boundaries once made segment 6 [52, 60)
def test_segment_evaluation_views(video_frames: int, num_frames: int, num_clips: int) -> None:
    views = [
        segment_indices(video_frames, num_frames=num_frames, clip_index=index, num_clips=num_clips)
        for index in range(num_clips)
    ]
    for clip in views:
        _check_clip(clip, video_frames, num_frames)
        _check_segment_frames(clip, video_frames, num_frames)
    stacked = np.stack(views)  # (views, frames): later views sit later in every segment
    assert np.all(np.diff(stacked, axis=0) >= 0)
    if num_clips == 1 and video_frames >= num_frames:  # the middle frame of each segment
        low, high = _segments(video_frames, num_frames)
        assert views[0].tolist() == ((low + high - 1) // 2).tolist()


@st.composite
def clip_specs(draw: st.DrawFn) -> ClipSpec:
    return ClipSpec(
        img_size=draw(st.integers(2, 6)),
        num_frames=draw(st.integers(1, 8)),
        frame_interval=draw(st.integers(1, 4)),
        sampling=draw(st.sampled_from(["dense", "segment"])),
        scale=(1.0, 1.5),
        hflip=0.5,
        num_temporal_clips=draw(st.integers(1, 4)),
        num_spatial_crops=draw(st.integers(1, 3)),
    )


def _numbered_video(video_frames: int, height: int, width: int) -> dict[str, Any]:
    """A pre-decoded row whose frame ``t`` is filled with the value ``t``, so a clip's pixels spell its indices."""
    frames = np.broadcast_to(
        np.arange(video_frames, dtype=np.uint8)[:, None, None, None], (video_frames, height, width, 3)
    )
    return {
        "video": np.ascontiguousarray(frames).tobytes(),
        "path": "videos/clip.mp4",
        "label": 1,
        "num_frames": video_frames,
        "height": height,
        "width": width,
        "start_frame": 0,
    }


def _frame_numbers(clip: np.ndarray, spec: ClipSpec) -> list[int]:
    """The frame indices a uint8 ``(3, T, S, S)`` clip of a numbered video was cut from."""
    assert clip.dtype == np.uint8 and clip.shape == (3, spec.num_frames, spec.img_size, spec.img_size)
    numbers = []
    for t in range(spec.num_frames):
        values = np.unique(clip[:, t])
        assert values.size == 1  # one frame, the same crop and flip on every channel
        numbers.append(int(values[0]))
    return numbers


TRAIN_SEEDS = _integers(TrainConfig.model_fields["seed"])  # every seed the config accepts


@fast(30)
@given(
    spec=clip_specs(),
    video_frames=st.integers(1, 60),
    extra=st.tuples(st.integers(0, 5), st.integers(0, 5)),
    seed=TRAIN_SEEDS,
)
def test_decoded_training_clips_follow_the_sampler(
    spec: ClipSpec, video_frames: int, extra: tuple[int, int], seed: int
) -> None:
    """DecodeClips (training) cuts the frames the sampler picks, one clip of ``num_frames``; the same seed and epoch
    give the same clip; other seeds and other epochs give other clips where the video leaves room. Seeds are any the
    config accepts for ``train.seed``."""
    row = _numbered_video(video_frames, spec.img_size + extra[0], spec.img_size + extra[1])

    def indices(seed: int, epoch: int = 0) -> list[int]:
        (clip,) = DecodeClips(spec, train=True, storage="decoded", seed=seed).views(row, epoch)
        return _frame_numbers(clip, spec)

    first = np.asarray(indices(seed), dtype=np.int64)
    _check_clip(first, video_frames, spec.num_frames)
    if spec.sampling == "dense":
        _check_dense_window(first, video_frames, spec.num_frames, spec.frame_interval)
        room = video_frames > (spec.num_frames - 1) * spec.frame_interval + 1
    else:
        _check_segment_frames(first, video_frames, spec.num_frames)
        room = video_frames > spec.num_frames
    assert indices(seed) == first.tolist()
    by_seed = {tuple(indices(other)) for other in range(16)}
    by_epoch = {tuple(indices(seed, epoch)) for epoch in range(16)}
    assert (len(by_seed) > 1) == room and (len(by_epoch) > 1) == room


@fast(40)
@given(spec=clip_specs(), video_frames=st.integers(1, 60), extra=st.tuples(st.integers(0, 5), st.integers(0, 5)))
def test_decoded_evaluation_views_follow_the_sampler(spec: ClipSpec, video_frames: int, extra: tuple[int, int]) -> None:
    """DecodeClips (evaluation): ``num_temporal_clips x num_spatial_crops`` views, clip-major, each cut at the
    sampler's evaluation indices, whatever the seed."""
    row = _numbered_video(video_frames, spec.img_size + extra[0], spec.img_size + extra[1])
    views = DecodeClips(spec, train=False, storage="decoded", seed=5).views(row)
    assert len(views) == spec.num_views
    expected = [spec.frame_indices(video_frames, None, k).tolist() for k in range(spec.num_temporal_clips)]
    assert [_frame_numbers(view, spec) for view in views] == [
        clip for clip in expected for _ in range(spec.num_spatial_crops)
    ]
    again = DecodeClips(spec, train=False, storage="decoded", seed=6).views(row)
    assert all(np.array_equal(a, b) for a, b in zip(views, again, strict=True))


# --------------------------------------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------------------------------------

names = st.text(min_size=1, max_size=10)
path_parts = st.text(
    st.characters(blacklist_characters="/\\\x00", blacklist_categories=("Cs",)), min_size=1, max_size=8
).filter(lambda part: part not in (".", ".."))
relative_paths = st.lists(path_parts, min_size=1, max_size=3).map("/".join)  # inside the dataset folder, as written


@st.composite
def manifests(draw: st.DrawFn) -> dict[str, Any]:
    """A manifest as the preparation writes it: classes, splits with counts and shards, rejected files, options."""
    classes = draw(st.lists(names, min_size=1, max_size=5, unique=True))
    splits = {}
    split_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    shards = draw(st.lists(relative_paths, max_size=4 * len(split_names), unique=True))  # each shard in one split
    for index, split in enumerate(split_names):
        class_counts = {name: draw(st.integers(0, 10**6)) for name in classes}
        splits[split] = {
            "count": sum(class_counts.values()),
            "shards": shards[index :: len(split_names)],
            "class_counts": class_counts,
        }
    rejected = draw(
        st.lists(st.fixed_dictionaries({"path": relative_paths, "reason": st.text(max_size=20)}), max_size=3)
    )
    return {
        "format": MANIFEST_FORMAT,
        "kind": draw(st.sampled_from(["image", "video"])),
        "classes": classes,
        "splits": splits,
        "rejected": rejected,
        "source": draw(st.text(max_size=20)),
        "options": draw(st.dictionaries(identifiers, json_scalars, max_size=4)),
        "created": "2026-01-01T00:00:00+00:00",
    }


def _absolute_shards(manifest: dict[str, Any], root: Path) -> dict[str, Any]:
    """``manifest`` with every shard as :func:`load_manifest` returns it for a dataset in ``root``."""
    expected = copy.deepcopy(manifest)
    for split in expected["splits"].values():
        split["shards"] = [str(root / shard) for shard in split["shards"]]
    return expected


@fast(40)
@given(manifest=manifests())
def test_manifest_round_trip_and_stable_hash(manifest: dict[str, Any]) -> None:
    given_manifest = copy.deepcopy(manifest)
    with tempfile.TemporaryDirectory() as folder:
        first, moved = Path(folder) / "ds", Path(folder) / "moved" / "ds"
        written = write_manifest(first, manifest)
        assert manifest == given_manifest  # the caller's dict is left alone
        assert written == first / MANIFEST_NAME
        loaded = load_manifest(first)
        assert loaded == _absolute_shards(manifest, first)
        assert load_manifest(written) == loaded  # the folder or its manifest file: the same
        stored = json.loads(written.read_text(encoding="utf-8"))
        assert stored == manifest  # shards inside the folder are kept relative
        digest = manifest_hash(first)

        write_manifest(first, loaded)  # what load gives, written back: the same file, the same hash
        assert json.loads(written.read_text(encoding="utf-8")) == stored and manifest_hash(first) == digest

        shutil.copytree(first, moved)  # the folder moved elsewhere: shards follow it, the hash does not change
        assert load_manifest(moved) == _absolute_shards(manifest, moved)
        assert manifest_hash(moved) == digest
        assert not list(first.glob(".*.tmp"))  # no temporary file left behind


def _changed(manifest: dict[str, Any], change: str, text: str) -> dict[str, Any]:
    other = copy.deepcopy(manifest)
    split = other["splits"][next(iter(other["splits"]))]
    if change == "class":
        other["classes"][0] += text
    elif change == "count":
        split["count"] += 1
    elif change == "class_count":
        split["class_counts"][other["classes"][-1]] += 1
    elif change == "shard":
        split["shards"].append(f"{text}/part-00000.parquet")
    elif change == "class_order":
        other["classes"] = other["classes"][::-1] if len(other["classes"]) > 1 else [*other["classes"], text]
    return other


@fast(30)
@given(
    manifest=manifests(),
    change=st.sampled_from(["class", "count", "class_count", "shard", "class_order"]),
    text=names,
)
def test_manifest_hash_changes_with_the_content(manifest: dict[str, Any], change: str, text: str) -> None:
    other = _changed(manifest, change, text)
    assume(other != manifest)
    with tempfile.TemporaryDirectory() as folder:
        write_manifest(Path(folder) / "a", manifest)
        write_manifest(Path(folder) / "b", other)
        assert manifest_hash(Path(folder) / "a") != manifest_hash(Path(folder) / "b")
