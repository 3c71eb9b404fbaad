"""The run configuration's schema: one frozen pydantic model per section (``ModelConfig`` ... ``ScalingSection``)
and the whole run (``Config``, with its derived values as properties); ``ConfigError``; the free-form fields and
``flatten``, which ``Config.flat`` needs. Reading presets, overrides and the command line lives in ``load``.
"""

from __future__ import annotations

import re
import time
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from fovea.secrets import find_uri_credentials, redact

# Seeds reach numpy's default_rng (non-negative only) and RandomState (Optuna, Tune's random search: below 2**32).
MAX_SEED = 2**32 - 1
# names that become a file or folder name: train.name and tune.name under train.storage_path (a run's checkpoints,
# a sweep's trials), tune.bootstrap_teacher (a preset file), job (a sweep's default name)
_FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME_LENGTH = 100


def check_folder_name(value: str) -> str:
    """``value`` when it can be a file or folder name as it is ('' too: a name is made up, or the field is off)."""
    if value and (len(value) > MAX_NAME_LENGTH or ".." in value or not _FOLDER_NAME.fullmatch(value)):
        raise ValueError(
            "must be a plain name (it becomes a file or folder name): letters, digits, '.', '_' and '-', starting "
            f"with a letter or digit, no '..', at most {MAX_NAME_LENGTH} characters"
        )
    return value


def folder_name(text: str) -> str:
    """``text`` made into a name ``check_folder_name`` accepts (any other character becomes ``-``)."""
    name = re.sub(r"[^A-Za-z0-9._-]+|\.{2,}", "-", text).lstrip("._-")[:MAX_NAME_LENGTH]
    return name or "run"


def _takes(annotation: Any, kinds: tuple[Any, ...]) -> bool:
    """Whether ``annotation`` (or an arm of its union, or its ``Literal``'s values) is one of ``kinds``."""
    if annotation in kinds or annotation is Any:
        return annotation is not Any or bool in kinds
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return any(type(arg) in kinds for arg in args)
    return origin in (typing.Union, types.UnionType) and any(_takes(arg, kinds) for arg in args)


def _bool_for_number(annotation: Any, value: Any) -> bool:
    """Whether ``value`` holds a bool where ``annotation`` wants a number (pydantic's lax mode reads true as 1)."""
    if isinstance(value, bool):
        return _takes(annotation, (int, float)) and not _takes(annotation, (bool,))
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_bool_for_number(arg, value) for arg in args)
    if origin in (tuple, list) and isinstance(value, list | tuple) and args:
        items = args if origin is tuple and Ellipsis not in args else (args[0],) * len(value)
        return any(_bool_for_number(arg, item) for arg, item in zip(items, value, strict=False))
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return any(_bool_for_number(args[1], item) for item in value.values())
    return False


class _Section(BaseModel):
    """Base for every config section: immutable, unknown keys rejected, defaults validated, numbers finite (a NaN or
    infinite rate, crop or timeout is never meant, and would only fail, or silently do nothing, inside a worker), and
    never a boolean (``train.epochs=true`` is no epoch count; pydantic alone would read it as 1)."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _bool_for_number(field.annotation, value):
            raise ValueError("takes a number, not true or false")
        return value


class ModelConfig(_Section):
    name: str = Field("vit_micro_patch4_32", description="timm model name (fovea.models registers more)")
    img_size: int = Field(224, ge=8, description="input resolution (square) the model is built for")
    pretrained: bool = Field(False, description="start from timm's published weights (needs hub access)")
    checkpoint: str = Field(
        "",
        description="weights to start from: a file in any layout `fovea weights inspect` reads, a transformers or "
        "fovea model folder, or models:/NAME@ALIAS (the classifier is reset to the dataset's classes)",
    )
    window_size: int | None = Field(None, ge=1, description="Swin: attention window size (None = model default)")
    drop_rate: float = Field(0.0, ge=0, lt=1, description="dropout before the classifier")
    drop_path_rate: float = Field(0.1, ge=0, lt=1, description="stochastic depth rate")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the constructor")


_NAMED_COLOURS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128), "grey": (128, 128, 128)}


def parse_colour(text: str) -> tuple[int, int, int]:
    """An RGB colour from ``white``, ``black``, ``gray``/``grey``, ``#rrggbb`` or ``r,g,b`` (0-255 each)."""
    value = text.strip().lower()
    if value in _NAMED_COLOURS:
        return _NAMED_COLOURS[value]
    if re.fullmatch(r"#[0-9a-f]{6}", value):
        return int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16)
    parts = [part.strip() for part in value.split(",")]
    if len(parts) == 3 and all(part.isdigit() and int(part) <= 255 for part in parts):
        return int(parts[0]), int(parts[1]), int(parts[2])
    raise ValueError(f"must be white, black, gray, #rrggbb or r,g,b (each 0-255), got {text!r}")


class DataConfig(_Section):
    path: str = Field("", description="prepared dataset folder holding manifest.json ('' = built-in demo set)")
    batch_size: int = Field(64, ge=1, description="training batch size per worker")
    eval_batch_size: int = Field(0, ge=0, description="evaluation batch size per worker (0 = 2 x batch_size)")
    shuffle: Literal["files", "global", "none"] = Field(
        "files", description="per-epoch order: shuffle shard files, a full global row shuffle, or none"
    )
    shuffle_buffer: int = Field(1024, ge=0, description="rows in the worker's local shuffle buffer (0 = off)")
    # 128: fewer, larger tasks leave Ray's scheduler less to do per image (2 CPUs, 224 px crops of 256 px JPEGs: 1.05x
    # a DataLoader's images/s against 0.95x with 64 and 1.03x with 256; benchmarks/RESULTS.md, issue 9)
    decode_batch_size: int = Field(128, ge=1, description="rows per Ray Data decode/augment task batch")
    prefetch_batches: int = Field(2, ge=0, description="batches prefetched on each worker")
    jpeg_decode: Literal["cpu", "device"] = Field(
        "cpu",
        description="images: decode JPEGs in Ray Data's CPU tasks, or on the training device (nvJPEG on a GPU; the "
        "CPU tasks only pick the crops)",
    )
    cache_max_mb: float = Field(
        1024, ge=0, description="keep a split's encoded rows in Ray's object store when its shards total at most this"
    )
    max_bad_shards: int = Field(
        0,
        ge=-1,
        description="shard files per split that may be missing or fail to read (before the run, or in any one pass "
        "over the split): skipped with a warning and counted; one more stops the run (-1 = no limit)",
    )
    crop_scale: tuple[float, float] = Field((0.08, 1.0), description="RandomResizedCrop area range")
    crop_ratio: tuple[float, float] = Field((0.75, 1.3333), description="RandomResizedCrop aspect-ratio range")
    crop_pct: float = Field(0.875, gt=0, le=1, description="eval: centre crop as a fraction of the resized side")
    hflip: float = Field(0.5, ge=0, le=1, description="horizontal flip probability")
    randaugment_ops: int = Field(0, ge=0, description="RandAugment operations per image (0 = off)")
    randaugment_magnitude: int = Field(9, ge=0, le=30, description="RandAugment magnitude")
    mean: tuple[float, float, float] | None = Field(None, description="normalisation mean (None = the model's)")
    std: tuple[float, float, float] | None = Field(None, description="normalisation std (None = the model's)")
    alpha_background: str = Field(
        "white",
        description="images: colour transparent pixels are composited onto when decoding (white, black, gray, "
        "#rrggbb or r,g,b), the same in training, evaluation and prediction",
    )
    mixup: float = Field(0.0, ge=0, description="mixup alpha (0 = off)")
    cutmix: float = Field(0.0, ge=0, description="cutmix alpha (0 = off)")
    mixup_prob: float = Field(1.0, ge=0, le=1, description="probability of applying mixup or cutmix to a batch")
    mixup_switch_prob: float = Field(0.5, ge=0, le=1, description="probability of cutmix instead of mixup")
    num_frames: int = Field(16, ge=1, description="video: frames per clip (the model is built for this many)")
    frame_interval: int = Field(
        4, ge=1, description="video: frames between sampled frames, dense sampling (MViT/SlowFast: 16 x 4)"
    )
    sampling: Literal["dense", "segment"] = Field(
        "dense", description="video: one window of num_frames x frame_interval, or one frame per equal segment (TSN)"
    )
    scale_jitter: tuple[float, float] = Field(
        (1.14, 1.43), description="video: training short side as a range of multiples of img_size (SlowFast 256-320)"
    )
    num_temporal_clips: int = Field(5, ge=1, description="video: clips per video in multi-view evaluation")
    num_spatial_crops: int = Field(1, ge=1, description="video: crops per clip in multi-view evaluation (1 or 3)")
    video_backend: Literal["decord", "pyav", "torchcodec"] = Field(
        "decord", description="video: decoder of encoded clips (torchcodec needs FFmpeg's shared libraries)"
    )
    video_decode: Literal["cpu", "device"] = Field(
        "cpu",
        description="video: decode clips in Ray Data's CPU tasks, or on the training device with torchcodec (NVDEC "
        "on a GPU; the CPU tasks only read the bytes and pick the frames)",
    )
    decode_threads: int = Field(1, ge=0, description="video: decoder threads per video (0 = the decoder picks)")
    demo_size: int = Field(64, ge=16, description="demo set: image side in pixels")
    demo_train_per_class: int = Field(500, ge=1, description="demo set: training images per class")
    demo_val_per_class: int = Field(100, ge=1, description="demo set: validation images per class")
    demo_video_size: int = Field(96, ge=32, multiple_of=32, description="demo video set: frame side in pixels")
    demo_video_frames: int = Field(32, ge=2, description="demo video set: frames per video")
    demo_video_train_per_class: int = Field(100, ge=1, description="demo video set: training videos per class")
    demo_video_val_per_class: int = Field(25, ge=1, description="demo video set: validation videos per class")

    @field_validator("crop_scale", "crop_ratio", "scale_jitter")
    @classmethod
    def _range_ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError("must be [low, high] with 0 < low <= high")
        return value

    @field_validator("alpha_background")
    @classmethod
    def _colour(cls, value: str) -> str:
        parse_colour(value)
        return value

    @property
    def alpha_rgb(self) -> tuple[int, int, int]:
        """``alpha_background`` as an RGB triple, what the image decoders take."""
        return parse_colour(self.alpha_background)

    @model_validator(mode="after")
    def _device_decode_augments(self) -> DataConfig:
        if self.jpeg_decode == "device" and self.randaugment_ops > 0:
            raise ValueError("data.jpeg_decode=device crops, resizes and flips on the device: no RandAugment there")
        return self


class OptimConfig(_Section):
    name: str = Field("adamw", description="optimizer (any timm.optim name)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.05, ge=0, description="weight decay (never on norms, biases, position embeddings)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas")
    eps: float = Field(1e-8, gt=0, description="Adam epsilon")
    layer_decay: float | None = Field(None, gt=0, le=1, description="layer-wise lr decay for ViT-family models")
    sched: Literal["cosine", "constant"] = Field("cosine", description="schedule after warmup")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warmup length in epochs")
    min_lr: float = Field(1e-6, ge=0, description="final learning rate of the cosine schedule")
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm (0 = off)")
    accum_steps: int = Field(1, ge=1, description="gradient accumulation steps per optimizer step")

    @field_validator("betas")
    @classmethod
    def _betas_below_one(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= beta < 1 for beta in value):
            raise ValueError("each beta must be in [0, 1)")
        return value


class TrainConfig(_Section):
    name: str = Field("", description="run name; rerunning the same name resumes it ('' = model + timestamp)")
    epochs: int = Field(10, ge=1, description="training epochs")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="random seed (0 to 2**32 - 1)")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="label smoothing of the cross-entropy")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto = bf16 autocast on GPU, fp32 on CPU")
    compile: bool | Literal["auto"] = Field("auto", description="torch.compile the model (auto = on GPU only)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode"
    )
    grad_checkpointing: bool = Field(
        False, description="activation checkpointing: recompute each block in the backward pass (less memory)"
    )
    ema: bool = Field(False, description="keep an exponential moving average of the weights")
    ema_decay: float = Field(0.999, gt=0, lt=1, description="EMA decay per optimizer step")
    max_failures: int = Field(0, ge=-1, description="worker failures Ray Train recovers from (-1 = unlimited)")
    storage_path: str = Field("", description="where checkpoints live ('' = $FOVEA_HOME/runs; shared on clusters)")
    verbose: bool = Field(
        False, description="print Ray's own logs too (or FOVEA_VERBOSE=1); else they stay in Ray's session folder"
    )
    keep_checkpoints: int = Field(
        2, ge=1, description="checkpoints kept in storage (2 or more: a resume falls back on one that is corrupt)"
    )
    torch_threads: int = Field(0, ge=0, description="intra-op threads per worker (0 = CPUs per worker)")
    nonfinite_patience: int = Field(
        20,
        ge=0,
        description="a step with a non-finite loss or gradient is skipped and counted; after this many in a row the "
        "run rolls back or stops (train.nonfinite_action; 0 = only skip)",
    )
    nonfinite_action: Literal["rollback", "stop"] = Field(
        "rollback",
        description="rollback: return to the last good epoch's weights and optimizer state with the learning rate "
        "times train.rollback_lr_factor; stop: fail the run with the reason",
    )
    rollback_lr_factor: float = Field(0.5, gt=0, lt=1, description="learning-rate factor applied at each rollback")
    max_rollbacks: int = Field(3, ge=0, description="rollbacks allowed before the run stops")
    inject_nan_steps: list[int] = Field(
        default_factory=list,
        description="fault injection (for tests and drills): these global optimizer steps (1-based) get a NaN loss",
    )

    _name_is_a_folder = field_validator("name")(check_folder_name)

    @field_validator("inject_nan_steps")
    @classmethod
    def _steps_positive(cls, value: list[int]) -> list[int]:
        if any(step < 1 for step in value):
            raise ValueError("steps count from 1")
        return value


class DistillConfig(_Section):
    type: Literal["none", "soft", "hard"] = Field("none", description="DeiT distillation mode")
    alpha: float = Field(0.5, ge=0, le=1, description="weight λ of the teacher term (1 - λ goes to the labels)")
    tau: float = Field(1.0, gt=0, description="softmax temperature τ for soft distillation")
    teacher: str = Field(
        "",
        description="teacher: models:/NAME@ALIAS or models:/NAME/VERSION, a fovea checkpoint file, or a model name",
    )
    teacher_checkpoint: str = Field("", description="weights file for a teacher given by model name")
    teacher_pretrained: bool = Field(False, description="a teacher given by model name uses timm's published weights")
    kl_reduction: Literal["batchmean", "legacy"] = Field(
        "batchmean", description="soft KL: per-sample mean, or the DeiT code's division by batch x classes"
    )
    heads: Literal["auto", "token", "single"] = Field(
        "auto",
        description="auto: the distillation-token head takes the teacher term when the student has one, else the "
        "single head takes both terms; token: require a distillation token; single: one (averaged) head for both",
    )

    @model_validator(mode="after")
    def _teacher_given(self) -> DistillConfig:
        if self.type != "none" and not self.teacher:
            raise ValueError(f"distill.type={self.type} needs distill.teacher")
        if self.teacher_checkpoint and self.teacher_pretrained:
            raise ValueError("give distill.teacher_checkpoint or distill.teacher_pretrained, not both")
        return self


class TrackConfig(_Section):
    enabled: bool = Field(True, description="record the run in MLflow")
    uri: str = Field("", description="tracking URI ('' = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    experiment: str = Field("fovea", description="MLflow experiment")
    registered_model_name: str = Field("", description="registry name for the final model ('' = model.name)")
    log_model: bool = Field(True, description="log the final model to the run and register it")
    challenger_alias: str = Field("challenger", description="alias every newly registered version takes ('' = none)")
    champion_alias: str = Field("champion", description="alias the best version holds ('' = never set it)")
    promote: Literal["if_better", "always", "never"] = Field(
        "if_better",
        description="when a new version takes champion_alias: if_better = when the model has no champion yet, or "
        "when it beats the champion's promote_metric by promote_min_delta on the same dataset (manifest hash)",
    )
    promote_metric: Literal["val_top1", "val_top5", "val_mv_top1", "val_mv_top5"] = Field(
        "val_top1", description="version tag compared by promote=if_better (higher is better; sweeps use tune.metric)"
    )
    promote_min_delta: float = Field(0.0, ge=0, description="if_better: points the new model must gain")
    log_every_steps: int = Field(10, ge=1, description="per-step loss is sampled every N steps")
    flush_interval_s: float = Field(
        10.0, gt=0, description="a background thread sends buffered metrics this often (training never waits on it)"
    )
    flush_timeout_s: float = Field(
        300.0,
        ge=0,
        description="at the end, how long to wait for an unreachable tracking store before writing what it has not "
        "received to a local file (replay it with: fovea runs sync FILE)",
    )


class EvalSection(_Section):
    """``jobs/evaluate.py``: which model to score, on which split, with how many views; training jobs ignore it."""

    model: str = Field(
        "",
        description="models:/NAME@ALIAS, models:/NAME/VERSION, NAME@ALIAS, a fovea checkpoint (file or run folder) "
        "or a folder made by `fovea models download`",
    )
    split: str = Field("val", description="the prepared dataset's split to score")
    views: Literal["single", "multi", "both"] = Field(
        "both",
        description="single: the centre view; multi: data.num_temporal_clips x data.num_spatial_crops views per "
        "sample, logits averaged; both (multi only when it means more than one view)",
    )
    flip_views: bool = Field(False, description="multi-view: add each view's horizontal flip (doubles the views)")
    link_version: bool = Field(True, description="tag the registered model version with this evaluation's run")


class TuneSection(_Section):
    """A Ray Tune sweep (``jobs/tune_*.py``); training jobs ignore it."""

    space: dict[str, Any] = Field(
        default_factory=dict,
        description="search space: dotted config path -> distribution, e.g. distill.tau: uniform(1, 10) "
        "(choice, grid, uniform, loguniform, randint, quniform, qloguniform, qrandint)",
    )
    name: str = Field("", description="sweep name; the same name resumes it ('' = job + digest of the config)")
    metric: str = Field("val_top1", description="the per-epoch metric trials are compared on")
    mode: Literal["max", "min"] = Field("max", description="maximise or minimise tune.metric")
    search: Literal["random", "grid", "optuna"] = Field(
        "random",
        description="random: sample tune.num_samples configs (grid() paths crossed); grid: every combination of "
        "choice/grid paths once; optuna: Optuna TPE",
    )
    num_samples: int = Field(4, ge=1, description="trials (random, optuna) or repeats of the grid (random)")
    scheduler: Literal["asha", "fifo", "pbt"] = Field(
        "asha", description="asha: stop weak trials early; fifo: run all to the end; pbt: population based training"
    )
    grace_period: int = Field(1, ge=1, description="ASHA: epochs every trial gets before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep the top 1/reduction_factor at each rung")
    perturbation_interval: int = Field(2, ge=1, description="PBT: epochs between exploit/explore steps")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="PBT: bottom fraction that copies the top")
    max_concurrent_trials: int = Field(
        0, ge=0, description="trials at once (0 = as many as the cluster's CPUs/GPUs fit, see README)"
    )
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="seed of the search algorithm (None = train.seed; 0 to 2**32 - 1)"
    )
    register_best: bool = Field(
        True, description="register the best trial's model; track.promote decides whether it takes track.champion_alias"
    )
    bootstrap_teacher: str = Field(
        "",
        description="when distill.teacher is models:/NAME@ALIAS and the registry lacks it, first train and register it "
        "with this train_vit preset on the sweep's data, e.g. teacher ('' = off: a missing teacher is an error)",
    )

    _name_is_a_folder = field_validator("name", "bootstrap_teacher")(check_folder_name)


class ScalingSection(_Section):
    num_workers: int | tuple[int, int] = Field(
        1,
        description="Ray Train workers (one per GPU when use_gpu); [min, max]: elastic, as many as the cluster has "
        "room for, restarting from the last checkpoint to shrink (a node lost) or grow (room freed)",
    )
    elastic_resize_interval_s: float = Field(
        60.0, gt=0, description="elastic runs: how often Ray Train looks for room to grow the worker group"
    )
    use_gpu: bool = Field(False, description="one GPU per worker")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per training worker")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict,
        description="more Ray resources each training worker needs, e.g. {accelerator_type:H100: 1} or a custom one",
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how Ray places the training workers on nodes (SPREAD: over as many nodes as it can)"
    )

    @field_validator("num_workers", mode="before")
    @classmethod
    def _worker_count(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ValueError(f"{list(value)}: give a worker count or [min, max], e.g. [2, 8]")
            low, high = value
            if not 1 <= low <= high:
                raise ValueError(f"[{low}, {high}]: elastic bounds need 1 <= min <= max")
            return low if low == high else (low, high)
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ValueError(f"{value}: at least 1 worker")
        return value

    @property
    def elastic(self) -> bool:
        """Whether the worker count is a ``[min, max]`` range (Ray Train's elastic training)."""
        return isinstance(self.num_workers, tuple)

    @property
    def min_workers(self) -> int:
        return self.num_workers[0] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def max_workers(self) -> int:
        return self.num_workers[1] if isinstance(self.num_workers, tuple) else self.num_workers


class Config(_Section):
    """The whole run. ``job`` says which job assembled it."""

    job: str = Field("train", description="the job that built this config")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    distill: DistillConfig = DistillConfig()
    track: TrackConfig = TrackConfig()
    scaling: ScalingSection = ScalingSection()
    tune: TuneSection = TuneSection()
    eval: EvalSection = EvalSection()

    _job_is_a_folder = field_validator("job")(check_folder_name)

    @model_validator(mode="after")
    def _no_credentials_in_uris(self) -> Config:
        # MLflow and object-store credentials come from the environment: a URI that carries them would be logged,
        # printed and shown in Ray's dashboard with the rest of the config
        found = find_uri_credentials(self.model_dump(mode="json"))
        if found:
            raise ValueError(f"{found[0]}: {found[1]}")
        return self

    def run_name(self) -> str:
        """The run's name: ``train.name`` or a fresh ``<model>-<timestamp>``."""
        return self.train.name or f"{self.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"

    def redacted(self) -> dict[str, Any]:
        """The config as a dict for anything that leaves the process (MLflow, checkpoints, files): secrets (strings
        under names such as ``model.kwargs.api_token``, see ``fovea.secrets``) replaced by ``***``."""
        return redact(self.model_dump(mode="json"))

    def flat(self) -> dict[str, Any]:
        """Every leaf as ``{"section.field": value}``, secrets redacted: the MLflow params."""
        return flatten(self.redacted())

    @property
    def eval_batch_size(self) -> int:
        """Evaluation batch size per worker: ``data.eval_batch_size``, or twice ``data.batch_size`` when it is 0."""
        return self.data.eval_batch_size or 2 * self.data.batch_size

    @property
    def registered_model_name(self) -> str:
        """The registry name the final model goes under: ``track.registered_model_name``, else the architecture."""
        return self.track.registered_model_name or self.model.name

    @property
    def num_views(self) -> int:
        """Video views per clip in multi-view evaluation: ``data.num_temporal_clips x data.num_spatial_crops``."""
        return self.data.num_temporal_clips * self.data.num_spatial_crops

    def recipe_hash(self) -> str:
        """A digest of what shapes the trained model: every field but where it is recorded and named (``track``,
        ``tune``, ``eval``, ``job``, ``train.name``, ``train.storage_path``, ``train.verbose``). Equal hashes: the same
        recipe."""
        import hashlib
        import json

        content = self.model_dump(mode="json")
        for section in ("track", "tune", "eval", "job"):
            content.pop(section, None)
        content["train"].pop("name", None)
        content["train"].pop("storage_path", None)
        content["train"].pop("verbose", None)
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


# dict-valued fields whose keys are data, not config fields
FREE_FORM_FIELDS = ("model.kwargs", "tune.space", "scaling.resources_per_worker")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to ``{"a.b.c": leaf}``; dict-valued free-form fields (``model.kwargs``) stay one leaf."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in FREE_FORM_FIELDS:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat
