"""After training, on the driver: the run's summary, and the final model logged to MLflow and registered (tagged
with what it is and where it came from), with the promotion rule applied."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from fovea.config import Config
from fovea.recipe import checkpoint_create_args, checkpoint_normalization


@dataclass
class TrainSummary:
    """What a finished run produced."""

    run_name: str
    epochs: int
    val_top1: float
    val_top5: float
    wall_time_s: float
    multi_view: dict[str, float] | None
    checkpoint_path: str
    mlflow_run_id: str | None
    tracking_uri: str | None
    registered_model: str | None
    registered_version: str | None
    dataset: str
    promotion: str = ""
    model_logging_s: float = 0.0

    def describe(self) -> str:
        lines = [
            f"run            {self.run_name}",
            f"val top-1      {self.val_top1:.2f}%  (top-5 {self.val_top5:.2f}%) after {self.epochs} epochs",
        ]
        if self.multi_view:
            views = self.multi_view
            lines.append(
                f"multi-view     top-1 {views['val_mv_top1']:.2f}%  (top-5 {views['val_mv_top5']:.2f}%) "
                f"over {int(views['val_views'])} views per video"
            )
        lines += [
            f"wall time      {self.wall_time_s:.1f} s",
            f"checkpoint     {self.checkpoint_path}",
            f"dataset        {self.dataset}",
        ]
        lines += tracking_lines(self.mlflow_run_id, self.tracking_uri, self.registered_model, self.registered_version)
        if self.registered_version and self.model_logging_s:
            lines[-1] += f"  (logged and registered in {self.model_logging_s:.1f} s)"
        if self.promotion:
            lines.append(f"promotion      {self.promotion}")
        return "\n".join(lines)


def tracking_lines(run_id: str | None, uri: str | None, model: str | None, version: str | None) -> list[str]:
    """The summary's MLflow lines: the run, and the registered version when there is one."""
    lines = [f"mlflow run     {run_id}  ({uri})"] if run_id else []
    if version:
        lines.append(f"registered     {model} version {version}")
    return lines


def untrained(state: dict[str, Any], history: list[dict[str, Any]]) -> str | None:
    """Why a finished run's model must not be registered, in one line: it took no optimizer step (its checkpoint's
    ``global_step``), or its epochs trained on no sample (``train_samples``: every train row failed to decode, say);
    None when it trained."""
    steps = state.get("global_step")
    samples = [epoch["train_samples"] for epoch in history if isinstance(epoch.get("train_samples"), int | float)]
    no_steps = isinstance(steps, int) and steps <= 0
    if history and not no_steps and (not samples or sum(samples) > 0):
        return None
    return (
        f"it took {steps if isinstance(steps, int) else 0} optimizer steps on {int(sum(samples))} training samples in "
        f"{len(history)} epoch(s): nothing was learned, so its model is not registered (check the job's warnings "
        "for train rows that did not decode, and that each worker gets data.batch_size x optim.accum_steps rows)"
    )


def refuse_untrained(
    cfg: Config,
    state: dict[str, Any],
    history: list[dict[str, Any]],
    *,
    what: str,
    tracking_uri: str | None,
    run_id: str | None,
) -> None:
    """Stop before a model that learned nothing is logged, registered or promoted (see ``untrained``); its MLflow
    run, when the store answers, ends as FAILED.

    Raises:
        RunFailure: ``<what>: it took 0 optimizer steps ...`` (the job exits 1).
    """
    from fovea.jobs import RunFailure
    from fovea.track import finish_run

    problem = untrained(state, history)
    if problem is None:
        return
    if cfg.track.enabled and tracking_uri and run_id and store_is_back(tracking_uri, run_id, cfg.track.flush_timeout_s):
        finish_run(tracking_uri, run_id, status="FAILED")
    raise RunFailure(f"{what}: {problem}")


def store_is_back(tracking_uri: str, run_id: str, timeout: float) -> bool:
    """Before the driver logs the final model: wait for the tracking store (up to ``timeout`` s), send what the
    worker could not (its fallback file on this machine) and draw the run's curves. False when the store stayed
    unreachable."""
    from fovea.track import fallback_file, log_curves_from_run, replay_fallback, wait_for_store

    if not wait_for_store(tracking_uri, timeout):
        print(f"warning: the MLflow tracking store at {tracking_uri} is unreachable", flush=True)
        return False
    pending = fallback_file(run_id)
    if pending.is_file():
        sent = replay_fallback(pending, tracking_uri)
        print(f"sent {sent['metrics']} held metrics and {sent['artifacts']} artifacts from {pending}", flush=True)
    log_curves_from_run(tracking_uri, run_id)
    return True


def log_final_model_of(
    cfg: Config,
    state: dict[str, Any],
    tracking_uri: str,
    run_id: str,
    classes: list[str],
    dataset_dir: Path,
    last: dict[str, float],
    *,
    promote: bool = True,
    extra_tags: dict[str, str] | None = None,
) -> tuple[str | None, str | None, str]:
    """Rebuild the trained model on CPU from the final checkpoint, log it to the run and register a version.

    The version is tagged with what it is and where it came from (architecture, dataset and manifest hash, val
    top-1/top-5, parameters, GMACs, git commit, recipe hash), takes ``track.challenger_alias``, and takes
    ``track.champion_alias`` when ``track.promote``'s rule says so.

    Args:
        promote: apply the promotion rule (a sweep applies its own, on ``tune.metric``).
        extra_tags: more version tags (a sweep's name and trial).

    Returns:
        ``(registered name, version, promotion line)``; name and version are None when nothing was registered.
    """
    from fovea.track import finish_run

    registered_name = cfg.registered_model_name if cfg.track.log_model else None
    version, promotion = None, ""
    if cfg.track.log_model:
        version = log_and_register(cfg, state, tracking_uri, run_id, classes, dataset_dir, last, extra_tags or {})
        if version is not None and promote:
            promotion = promote_version(cfg, tracking_uri, version, last, dataset_dir)
    log_validation_records(state, tracking_uri, run_id, classes, dataset_dir)
    finish_run(tracking_uri, run_id)
    return registered_name, version, promotion


def log_validation_records(
    state: dict[str, Any], tracking_uri: str, run_id: str, classes: list[str], dataset_dir: Path | str
) -> None:
    """The run's dataset as its MLflow input, and its last validation's confusion matrix (PNG + CSV), per-class
    recall and misclassified gallery (``fovea.track.figures``) from the final checkpoint. A checkpoint written
    before they were kept has none; a store that refuses them costs a warning line, not the run."""
    from fovea.data import load_manifest, location_label, manifest_hash
    from fovea.errors import typed_line
    from fovea.track import log_dataset_input, log_training_figures

    try:
        manifest = load_manifest(dataset_dir)
        counts = {f"{split}_rows": int(info["count"]) for split, info in manifest["splits"].items()}
        label = location_label(dataset_dir)
        log_dataset_input(
            tracking_uri,
            run_id,
            name=Path(label).name or label,
            digest=manifest_hash(dataset_dir),
            source=label,
            counts={**counts, "classes": len(manifest["classes"])},
        )
        confusion = state.get("val_confusion")
        if confusion is not None:
            log_training_figures(tracking_uri, run_id, classes, confusion, state.get("val_gallery"))
    except Exception as err:  # noqa: BLE001 - the model is logged already; these records must not fail the run
        print(f"warning: the run's dataset input and validation figures were not logged: {typed_line(err)}")


def final_model(cfg: Config, state: dict[str, Any], classes: list[str]) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model on the CPU in eval mode, rebuilt from the checkpoint's own ``create_args``, and them."""
    from fovea.models import create_model

    create_kwargs = checkpoint_create_args(state, cfg.model_dump(mode="json"), num_classes=len(classes))
    model = create_model(cfg.model.name, **create_kwargs)
    model.load_state_dict(state["model"])
    return model.eval(), create_kwargs


def log_and_register(
    cfg: Config,
    state: dict[str, Any],
    tracking_uri: str,
    run_id: str,
    classes: list[str],
    dataset_dir: Path,
    last: dict[str, float],
    extra_tags: dict[str, str],
) -> str | None:
    """Log the final model to the run and register it as a version of ``cfg.registered_model_name``."""
    import numpy as np

    from fovea.data import location_label, manifest_hash
    from fovea.models import count_macs, count_parameters, is_video_model
    from fovea.provenance import git_commit
    from fovea.track import log_final_model
    from fovea.train.build import normalization

    video = is_video_model(cfg.model.name)
    model, create_kwargs = final_model(cfg, state, classes)
    mean, std = checkpoint_normalization(state) or normalization(model, cfg.data)
    size = cfg.model.img_size
    frames = (cfg.data.num_frames,) if video else ()
    example = np.zeros((1, 3, *frames, size, size), dtype=np.float32)
    shape = (
        f"(N, 3, {cfg.data.num_frames}, {size}, {size}) normalised clips"
        if video
        else f"(N, 3, {size}, {size}) normalised images"
    )
    macs = count_macs(cfg.model.name, example.shape, **create_kwargs)
    data_hash = manifest_hash(dataset_dir)
    commit = git_commit()
    params = count_parameters(model)
    version_tags = {
        "architecture": type(model).__name__,
        "model_name": cfg.model.name,
        "dataset": location_label(dataset_dir),
        "manifest_hash": data_hash,
        "val_top1": f"{last['val_top1']:.2f}",
        "val_top5": f"{last['val_top5']:.2f}",
        **{key: f"{last[key]:.2f}" for key in ("val_mv_top1", "val_mv_top5") if key in last},
        "epochs": str(int(last["epoch"])),
        "params": str(params),
        "gmacs": f"{macs / 1e9:.4g}" if macs is not None else "unknown",
        "img_size": str(cfg.model.img_size),
        **({"num_frames": str(cfg.data.num_frames)} if video else {}),
        "num_classes": str(len(classes)),
        "git_commit": commit,
        "recipe_hash": cfg.recipe_hash(),
        "job": cfg.job,
        **extra_tags,
    }
    description = (
        f"{cfg.model.name} ({type(model).__name__}, {params / 1e6:.2f}M parameters"
        + (f", {macs / 1e9:.3g} GMACs per view" if macs is not None else "")
        + f") trained by fovea job {cfg.job} for {int(last['epoch'])} epochs on {dataset_dir} "
        f"(manifest {data_hash}); val top-1 {last['val_top1']:.2f}%, top-5 {last['val_top5']:.2f}%. "
        f"mlflow.pyfunc.load_model takes {'video' if video else 'image'} files' bytes (base64 in JSON), paths or "
        "uint8 arrays and answers the top-k class names (see the signature and input example); "
        f"mlflow.pytorch.load_model's module takes float32 {shape}, normalised with mean "
        f"{tuple(round(m, 4) for m in mean)} and std {tuple(round(v, 4) for v in std)}, and gives logits over "
        "the classes in model_info/classes.json. "
        f"Source: git {commit}."
    )
    clip = {"num_frames": cfg.data.num_frames, "frame_interval": cfg.data.frame_interval, "sampling": cfg.data.sampling}
    from fovea.predict.inputs import dataset_example

    return log_final_model(
        tracking_uri,
        run_id,
        model,
        input_example=example,
        registered_model_name=cfg.registered_model_name,
        version_tags=version_tags,
        description=description,
        classes=classes,
        metadata={
            "model_name": cfg.model.name,
            "create_kwargs": create_kwargs,
            "img_size": cfg.model.img_size,
            "mean": list(mean),
            "std": list(std),
            # how evaluation and prediction decode inputs as training did
            "crop_pct": cfg.data.crop_pct,
            **({} if video else {"alpha_background": cfg.data.alpha_background}),
            **(clip if video else {}),
            # the training recipe's test-time views: evaluation's multi-view defaults follow them
            "hflip": cfg.data.hflip,
            "num_spatial_crops": cfg.data.num_spatial_crops,
            **({"num_temporal_clips": cfg.data.num_temporal_clips} if video else {}),
        },
        raw_example=dataset_example(dataset_dir, video=video),  # a real image or clip: the pyfunc's input example
    )


def promote_version(cfg: Config, tracking_uri: str, version: str, last: dict[str, float], dataset_dir: Path) -> str:
    """``track.promote``'s rule applied to a new version on ``track.promote_metric``: the promotion line."""
    from fovea.data import location_label, manifest_hash
    from fovea.track import promote_new_version

    metric = cfg.track.promote_metric
    if metric not in last:
        return f"champion left as it is: this run has no {metric} (track.promote_metric)"
    _, promotion = promote_new_version(
        tracking_uri,
        cfg.registered_model_name,
        version,
        score=float(last[metric]),
        metric=metric,
        policy=cfg.track.promote,
        champion_alias=cfg.track.champion_alias,
        challenger_alias=cfg.track.challenger_alias,
        min_delta=cfg.track.promote_min_delta,
        dataset=location_label(dataset_dir),
        manifest_hash=manifest_hash(dataset_dir),
    )
    return promotion
