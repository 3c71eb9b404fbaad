"""Pre-flight checks (before Ray starts: the model, the dataset, a resume, the teacher) and the explanations of a
failed run (a checkpoint, non-finite training, shard files): each problem a user can act on, in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fovea.config import Config, ConfigError
from fovea.errors import first_line


def check_before_start(cfg: Config) -> None:
    """Checks that need no Ray: the model exists, the dataset folder is prepared, a resume is consistent.

    Raises:
        ConfigError: one line naming the field.
    """
    from fovea.data import load_manifest
    from fovea.models import check_model_name, is_video_model

    try:
        check_model_name(cfg.model.name)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    video = is_video_model(cfg.model.name)
    if cfg.data.path:
        try:
            manifest = load_manifest(cfg.data.path)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"data.path: {err}") from None
        kind = manifest.get("kind", "image")
        if (kind == "video") != video:
            takes = "video clips" if video else "images"
            raise ConfigError(f"data.path: {cfg.data.path} is a {kind} dataset, but {cfg.model.name} takes {takes}")
        missing = [split for split in ("train", "val") if split not in manifest["splits"]]
        if missing:
            raise ConfigError(f"data.path: {cfg.data.path} has no {missing[0]} split (training needs train and val)")
        if not any(cfg.tune.space.get(path) is not None for path in STEP_FIELDS):  # else each trial is checked
            check_optimizer_steps(cfg, manifest["splits"]["train"]["count"])
    elif video and cfg.data.hflip > 0:
        raise ConfigError(
            "data.hflip: the demo videos' classes include move_left and move_right, mirror images of each other; "
            "set data.hflip=0"
        )
    if video and cfg.distill.type != "none":
        raise ConfigError("distill.type: distillation is implemented for image models only")
    if cfg.model.pretrained and cfg.model.checkpoint:
        raise ConfigError("model.pretrained and model.checkpoint: give one, not both")
    if cfg.model.pretrained:
        from fovea.weights.hub import check_published

        try:
            check_published(cfg.model.name)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if cfg.model.checkpoint:
        classes = len(manifest["classes"]) if cfg.data.path else 0
        for line in check_start_weights(cfg, num_classes=classes).lines():
            print(line, flush=True)
    if cfg.distill.type != "none":
        check_teacher_spec(cfg)


# the fields whose product is the rows one optimizer step takes on each worker
STEP_FIELDS = ("data.batch_size", "optim.accum_steps")


def check_optimizer_steps(cfg: Config, train_count: int) -> None:
    """The run takes at least one optimizer step per epoch: each worker's share of the ``train_count`` training rows
    holds one ``data.batch_size x optim.accum_steps`` (a last, partial batch is dropped, so a smaller share trains
    nothing, and its model would be registered all the same). Elastic runs are counted at their most workers.

    Raises:
        ConfigError: one line with the numbers and what to change.
    """
    workers = cfg.scaling.max_workers
    share = train_count // workers
    batch, accum = cfg.data.batch_size, cfg.optim.accum_steps
    if share >= batch * accum:
        return
    fewer = "use fewer workers (scaling.num_workers) or " if workers > 1 and train_count else ""
    smaller = f"make data.batch_size x optim.accum_steps at most {share}, " if share else ""
    raise ConfigError(
        f"data.batch_size x optim.accum_steps = {batch} x {accum} = {batch * accum} rows per optimizer step, but each "
        f"of {workers} worker(s) gets {share} of the {train_count} training rows (a last, partial batch is dropped): "
        f"the run would take no optimizer step; {smaller}{fewer}add training data"
    )


def check_start_weights(cfg: Config, *, num_classes: int = 0) -> Any:
    """``model.checkpoint`` before Ray starts: the file reads as weights (a truncated, corrupt or foreign file of any
    format is refused here, not in every worker), and they fit the model, built on the ``meta`` device (shapes only,
    no memory; an architecture that cannot be built there has only its file read).

    Raises:
        ConfigError: ``model.checkpoint: ...`` in one line.
    """
    import warnings

    import torch

    from fovea.models import create_model, load_weights
    from fovea.recipe import model_create_args
    from fovea.sources import source_kind, start_weights_path
    from fovea.weights import LoadReport, read_state_dict

    if source_kind(cfg.model.checkpoint)[0] == "registry":
        from fovea.track import resolve_tracking_uri

        try:
            path = start_weights_path(cfg.model.checkpoint, resolve_tracking_uri(cfg.track.uri))
        except ValueError as err:
            raise ConfigError(f"model.checkpoint: {first_line(err)}") from None
    else:
        path = Path(cfg.model.checkpoint).expanduser()
    if not path.exists():
        raise ConfigError(f"model.checkpoint: no such file: {cfg.model.checkpoint}")
    try:
        with torch.device("meta"):
            model = create_model(cfg.model.name, **model_create_args(cfg, num_classes=num_classes or 2))
    except Exception:  # noqa: BLE001 - the workers say what the constructor rejects
        model = None
    try:
        with warnings.catch_warnings():  # torch says each copy into a meta tensor does nothing: that is the point
            warnings.filterwarnings("ignore", message=".*to a meta parameter in the current model")
            if model is None:
                read_state_dict(path)
                return LoadReport(path=path, layout="unchecked", origin="the model could not be built here", tensors=0)
            report = load_weights(model, path)
    except (ValueError, OSError, RuntimeError) as err:
        raise ConfigError(f"model.checkpoint: {first_line(err)}") from None
    report.model_classes = num_classes
    return report


def check_teacher_spec(cfg: Config) -> None:
    from fovea.distill import teacher_kind
    from fovea.models import check_model_name
    from fovea.refs import parse_registry_uri

    spec = cfg.distill.teacher
    kind = teacher_kind(spec)
    if kind == "registry":
        try:
            parse_registry_uri(spec)
        except ValueError as err:
            raise ConfigError(f"distill.teacher: {err}") from None
    elif kind == "file":
        path = Path(spec).expanduser()
        from fovea.model_folder import is_model_dir

        if not (path.is_file() or (path / "checkpoint.pt").is_file() or is_model_dir(path)):
            raise ConfigError(f"distill.teacher: no such checkpoint file or model folder: {spec}")
    else:
        try:
            check_model_name(spec)
        except ValueError as err:
            raise ConfigError(f"distill.teacher: {err}".replace("model.name: ", "")) from None
        if not cfg.distill.teacher_checkpoint and not cfg.distill.teacher_pretrained:
            raise ConfigError(
                f"distill.teacher={spec} needs weights: set distill.teacher_checkpoint=FILE "
                "(or distill.teacher_pretrained=true for timm's published weights)"
            )
    if kind != "name" and (cfg.distill.teacher_checkpoint or cfg.distill.teacher_pretrained):
        raise ConfigError("distill.teacher_checkpoint/teacher_pretrained go with a teacher given by model name")
    if cfg.distill.teacher_checkpoint and not Path(cfg.distill.teacher_checkpoint).expanduser().is_file():
        raise ConfigError(f"distill.teacher_checkpoint: no such file: {cfg.distill.teacher_checkpoint}")
    if cfg.distill.heads == "token":
        from fovea.distill import has_distillation_token
        from fovea.models import create_model

        student = create_model(cfg.model.name, num_classes=2, img_size=cfg.model.img_size, **cfg.model.kwargs)
        if not has_distillation_token(student):
            raise ConfigError(f"distill.heads=token: {cfg.model.name} has no distillation token")


def load_checked_teacher(cfg: Config) -> Any:
    """Load the teacher on the driver (the caller checks its classes against the dataset's with ``check_teacher``).

    Loading here, not on the workers, means a teacher file or registry only the driver can reach still works on
    a cluster: the workers get the module through Ray's object store.

    Raises:
        ConfigError: ``distill.teacher: ...`` in one line.
    """
    from fovea.distill import load_teacher
    from fovea.track import resolve_tracking_uri

    try:
        return load_teacher(
            cfg.distill.teacher,
            num_classes=0,
            img_size=cfg.model.img_size,
            checkpoint=cfg.distill.teacher_checkpoint,
            pretrained=cfg.distill.teacher_pretrained,
            tracking_uri=resolve_tracking_uri(cfg.track.uri),
        )
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        weights, message = cfg.distill.teacher_checkpoint, str(err).removeprefix("distill.teacher_checkpoint: ")
        named = weights and str(Path(weights).expanduser()) in message
        raise ConfigError(f"{'distill.teacher_checkpoint' if named else 'distill.teacher'}: {message}") from None


def checkpoint_failure(err: BaseException) -> str | None:
    """The one-line problem behind a failed ``trainer.fit()`` when it is one fovea explains (a checkpoint, or
    non-finite training; Ray Train's ``WorkerGroupError`` carries each worker's exception, wrapped with its
    traceback), or None."""
    from fovea.checkpoints import CheckpointError, CheckpointWriteError
    from fovea.train.rollback import NonFiniteTraining

    for rank, failure in sorted((getattr(err, "worker_failures", None) or {}).items()):
        original = getattr(failure, "_base_exc", failure)  # Ray's UserExceptionWithTraceback wraps it
        if isinstance(original, CheckpointError | CheckpointWriteError | NonFiniteTraining):
            return f"worker {rank}: {original}"
    return None


def data_failure(err: BaseException, max_bad_shards: int) -> str | None:
    """The one-line shard problem behind a failed ``trainer.fit()``: a shard file that failed to read with the split's
    ``data.max_bad_shards`` used up (Ray Data failed the pass, the worker reading it failed), or None."""
    from fovea.data.shards import shard_read_problem

    for rank, failure in sorted((getattr(err, "worker_failures", None) or {}).items()):
        problem = shard_read_problem(failure)
        if problem:
            return f"worker {rank}: {problem}; more shard files failed than data.max_bad_shards={max_bad_shards} allows"
    return None
