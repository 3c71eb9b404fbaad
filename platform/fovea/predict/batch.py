"""``jobs/predict.py``: batch inference with Ray Data over a folder, a file list or a prepared dataset's split.

The model (``models:/NAME@ALIAS``, a checkpoint or a model folder, loaded by ``fovea.sources``) is checked on the
driver, which resolves an alias to its version; ``map_batches`` runs ``PredictBatch``, a callable class whose actors
(``--concurrency``, one GPU each with ``--use-gpu``) load that version once each and decode every input through
``fovea.predict`` (the evaluation's decoders, the model's recorded settings). Files that do not read or decode are
skipped, counted and listed (and written to ``OUT.skipped.csv``); the driver prints a progress line, writes ``OUT``
(Parquet: ``path``, ``label``, ``probability``, ``classes``, ``probabilities``; ``true_label`` for a prepared split)
and a summary (files/s).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from fovea.predict.inputs import VIEW_CHOICES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
LIST_SUFFIXES = (".txt", ".lst")


class UsageError(ValueError):
    """A bad flag, input or model: one line, exit 2."""


@dataclass
class Inputs:
    """What to predict on: file paths, or a prepared split (its manifest and split name)."""

    paths: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    split: str = ""
    ignored: int = 0  # files in a folder that are not of the model's kind
    description: str = ""

    @property
    def count(self) -> int:
        if self.manifest is not None:
            return int(self.manifest["splits"][self.split].get("count") or 0)
        return len(self.paths)


def list_inputs(data: str, *, video: bool, split: str) -> Inputs:
    """The inputs ``--data`` names: a prepared dataset (``manifest.json``), a folder (searched recursively for the
    model's kind of files) or a list file (one path per line, relative to the list's folder).

    Raises:
        UsageError: a missing path, an empty folder or list, or a split the dataset lacks.
    """
    from fovea.data import load_manifest

    path = Path(data).expanduser()
    if not path.exists():
        raise UsageError(f"--data: no such file or folder: {data}")
    if path.is_dir() and (path / "manifest.json").is_file():
        manifest = load_manifest(path)
        if not manifest["splits"].get(split, {}).get("shards"):
            names = ", ".join(name for name, info in manifest["splits"].items() if info.get("shards")) or "none"
            raise UsageError(f"--split: {data} has no {split!r} split with data (splits with data: {names})")
        if (manifest.get("kind") == "video") != video:
            raise UsageError(f"--data: {data} is a{' video' if manifest.get('kind') == 'video' else 'n image'} set")
        return Inputs(manifest=manifest, split=split, description=f"{data}, split {split}")
    suffixes = VIDEO_SUFFIXES if video else IMAGE_SUFFIXES
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        chosen = [str(p) for p in files if p.suffix.lower() in suffixes]
        inputs = Inputs(paths=chosen, ignored=len(files) - len(chosen), description=str(data))
    else:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
        entries = [line for line in lines if line and not line.startswith("#")]
        inputs = Inputs(paths=[str(path.parent / e) if not Path(e).is_absolute() else e for e in entries])
        inputs.description = f"{data} ({len(entries)} listed)"
    if not inputs.paths:
        kind = "video" if video else "image"
        raise UsageError(f"--data: {data} holds no {kind} files ({', '.join(suffixes)})")
    return inputs


class PredictBatch:
    """``map_batches`` callable class: each actor builds the model once and predicts its batches.

    Rows: ``path`` (read here) or the encoded ``image``/``video`` column of a prepared split (``label`` kept as
    ``true_label``). Output rows: ``path``, ``label``, ``probability``, ``classes``, ``probabilities``, ``error``.
    """

    def __init__(
        self,
        model: str,
        tracking_uri: str,
        *,
        views: str,
        top_k: int,
        use_gpu: bool,
        options: dict[str, Any],
        dataset_classes: list[str] | None = None,
    ) -> None:
        import torch

        from fovea.predict.predictor import Predictor
        from fovea.sources import load_model

        loaded = load_model(model, tracking_uri)  # on this actor's node, once (as training workers load weights)
        self.location = loaded.location  # a registry alias resolved: models:/NAME/VERSION
        info = {**loaded.inputs, "model_name": loaded.model_name, "classes": loaded.classes}
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.predictor = Predictor.from_info(loaded.module, info, views=views, device=device, **options)
        self.top_k = top_k
        self.classes = dataset_classes

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        column = "video" if self.predictor.spec.video else "image"
        items = list(batch[column]) if column in batch else [str(p) for p in batch["path"]]
        paths = [str(p) for p in batch["path"]] if "path" in batch else [""] * len(items)
        started = time.perf_counter()
        predictions = self.predictor.predict(items, top_k=self.top_k)
        seconds = (time.perf_counter() - started) / max(1, len(items))
        out: dict[str, Any] = {
            "path": np.asarray(paths, dtype=object),
            "label": np.asarray([p.label for p in predictions], dtype=object),
            "probability": np.asarray([p.probability for p in predictions], dtype=np.float64),
            # JSON text through Ray Data (lists of varying length per row); lists again in the Parquet file
            "classes": np.asarray([json.dumps(p.classes) for p in predictions], dtype=object),
            "probabilities": np.asarray([json.dumps(p.probabilities) for p in predictions], dtype=object),
            "error": np.asarray([p.error for p in predictions], dtype=object),
            "seconds": np.full(len(predictions), seconds),  # this batch's time, a share per row
        }
        if "label" in batch and self.classes:
            out["true_label"] = np.asarray([self.classes[int(i)] for i in batch["label"]], dtype=object)
        return out


def build_parser() -> argparse.ArgumentParser:
    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            self.exit(2, f"predict: error: {message} (see --help)\n")

    parser = Parser(prog="predict", description="Batch predictions of a fovea model with Ray Data.")
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, NAME@ALIAS, ...")
    parser.add_argument("--data", required=True, help="a folder, a list file, or a prepared dataset")
    parser.add_argument("--out", required=True, help="the Parquet file to write (e.g. predictions.parquet)")
    parser.add_argument("--split", default="val", help="the split of a prepared dataset (default: val)")
    parser.add_argument("--top-k", type=int, default=5, help="classes per input (default: 5)")
    parser.add_argument("--views", choices=VIEW_CHOICES, default="default", help="default: video multi, image single")
    parser.add_argument("--num-temporal-clips", type=int, default=None, help="video clips per input (multi views)")
    parser.add_argument("--num-spatial-crops", type=int, default=None, help="crops per clip/image (multi views)")
    parser.add_argument("--batch-size", type=int, default=32, help="inputs per model batch (default: 32)")
    parser.add_argument("--concurrency", type=int, default=1, help="model actors (default: 1)")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per actor (also: scaling.use_gpu=true)")
    parser.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default: as the other jobs)")
    parser.add_argument("overrides", nargs="*", help="scaling.use_gpu=true is accepted as --use-gpu")
    return parser


@dataclass
class PredictResult:
    """A finished batch prediction."""

    model: str
    data: str
    out: Path
    predicted: int
    skipped: list[tuple[str, str]]
    ignored: int
    wall_time_s: float
    startup_s: float
    actor_s: float  # seconds the actors spent reading, decoding and predicting, summed
    device: str
    layout: str

    @property
    def files_per_s(self) -> float:
        """Files (skipped ones too) per second of the Ray Data pass, the model's actors' start included."""
        seconds = self.wall_time_s - self.startup_s
        return (self.predicted + len(self.skipped)) / seconds if seconds > 0 else 0.0

    def describe(self) -> str:
        lines = [
            f"model          {self.model}",
            f"data           {self.data}",
            f"predicted      {self.predicted} files -> {self.out}",
            f"skipped        {len(self.skipped)} unreadable"
            + (f" (listed in {skipped_file(self.out)})" if self.skipped else ""),
        ]
        lines += [f"  {path}: {reason}" for path, reason in self.skipped[:10]]
        if len(self.skipped) > 10:
            lines.append(f"  ... {len(self.skipped) - 10} more")
        if self.ignored:
            lines.append(f"ignored        {self.ignored} files of another kind in the folder")
        lines.append(f"views          {self.layout}, on {self.device}")
        lines.append(
            f"throughput     {self.files_per_s:.1f} files/s over {self.wall_time_s - self.startup_s:.1f} s "
            f"({self.wall_time_s:.1f} s in all, with the model's load and Ray's start)"
        )
        if self.actor_s > 0:
            rate = (self.predicted + len(self.skipped)) / self.actor_s
            lines.append(
                f"               {rate:.1f} files/s per actor while busy (read, decode, model: {self.actor_s:.1f} s)"
            )
        return "\n".join(lines)


def skipped_file(out: Path) -> Path:
    """Where the skipped inputs are listed: ``OUT.skipped.csv``."""
    return out.with_name(out.name + ".skipped.csv")


def check_args(args: argparse.Namespace) -> None:
    """Flag checks before anything loads. Raises ``UsageError``."""
    known = ("scaling.use_gpu=true", "scaling.use_gpu=false")
    for key in [override for override in args.overrides if override.replace(" ", "") not in known]:
        raise UsageError(f"unknown argument {key!r}: only scaling.use_gpu=true|false is taken as key=value")
    args.use_gpu = args.use_gpu or any(o.replace(" ", "") == "scaling.use_gpu=true" for o in args.overrides)
    for name in ("top_k", "batch_size", "concurrency", "num_temporal_clips", "num_spatial_crops"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
    if not Path(args.data).expanduser().exists():
        raise UsageError(f"--data: no such file or folder: {args.data}")
    out = Path(args.out).expanduser()
    if out.suffix != ".parquet":
        raise UsageError(f"--out: {args.out} is not a .parquet file")
    if not out.parent.is_dir():
        raise UsageError(f"--out: no such folder: {out.parent}")


def rows_dataset(inputs: Inputs, video: bool) -> Any:
    """The Ray dataset of the inputs' rows."""
    import ray.data

    if inputs.manifest is None:
        return ray.data.from_items([{"path": path} for path in inputs.paths])
    from fovea.data.stream import read_split

    if video:
        storage = inputs.manifest.get("storage", "encoded")
        if storage != "encoded":
            raise UsageError(f"--data: a prepared video set stored as {storage!r}: give the video files instead")
        return read_split(inputs.manifest, inputs.split, columns=["video", "path", "label"])
    columns = ["image", "label"] + (["path"] if _has_path(inputs.manifest, inputs.split) else [])
    return read_split(inputs.manifest, inputs.split, columns=columns)


def _has_path(manifest: dict[str, Any], split: str) -> bool:
    import pyarrow.parquet as pq

    return "path" in pq.read_schema(manifest["splits"][split]["shards"][0]).names


def run_prediction(args: argparse.Namespace) -> PredictResult:
    """Load the model, predict every input on Ray Data, write the Parquet file. Raises ``UsageError``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fovea.errors import first_line
    from fovea.models import is_video_model
    from fovea.predict.inputs import spec_from_info
    from fovea.sources import load_model
    from fovea.track import resolve_tracking_uri
    from fovea.train.trainer import init_ray

    started = time.time()
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    try:
        model = load_model(args.model, tracking_uri)
    except (ValueError, OSError, RuntimeError, KeyError, ImportError) as err:
        raise UsageError(f"--model: {first_line(err)}") from None
    video = is_video_model(model.model_name)
    inputs = list_inputs(args.data, video=video, split=args.split)
    info = {**model.inputs, "model_name": model.model_name, "classes": model.classes}
    options = {"num_temporal_clips": args.num_temporal_clips, "num_spatial_crops": args.num_spatial_crops}
    spec = spec_from_info(info, video=video, views=args.views, **options)  # checks before Ray starts
    init_ray()
    concurrency = gpu_concurrency(args.concurrency) if args.use_gpu else args.concurrency
    loaded_s = time.time() - started
    rows = rows_dataset(inputs, video)
    predicted = rows.map_batches(
        PredictBatch,
        fn_constructor_kwargs={
            # the version the driver resolved, so that an alias moved during the run cannot mix two versions
            "model": model.location if model.location.startswith("models:/") else args.model,
            "tracking_uri": tracking_uri,
            "dataset_classes": list(inputs.manifest["classes"]) if inputs.manifest is not None else None,
            "views": args.views,
            "top_k": args.top_k,
            "use_gpu": args.use_gpu,
            "options": {**options, "batch_size": args.batch_size},
        },
        batch_size=args.batch_size,
        concurrency=concurrency,
        num_gpus=1 if args.use_gpu else 0,
        batch_format="numpy",
    )
    tables, skipped, done, last, begun = [], [], 0, 0.0, time.time()
    busy = 0.0  # the actors' seconds in __call__ (reading, decoding, the model)
    for batch in predicted.iter_batches(batch_size=None, batch_format="numpy"):
        errors = batch.pop("error")
        busy += float(batch.pop("seconds").sum())
        bad = errors != ""
        skipped += [(str(path), str(reason)) for path, reason in zip(batch["path"][bad], errors[bad], strict=True)]
        tables.append(pa.table({key: values[~bad] for key, values in batch.items()}))
        done += len(errors)
        if time.time() - last > 5 or done == inputs.count:
            last = time.time()
            rate = done / max(last - begun, 1e-9)
            print(f"predicted {done}/{inputs.count} files ({len(skipped)} skipped), {rate:.1f} files/s", flush=True)
    out = Path(args.out).expanduser()
    table = _final_table(tables)
    pq.write_table(table, out)
    if skipped:
        with skipped_file(out).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "reason"])
            writer.writerows(skipped)
    device = "cuda" if args.use_gpu else "cpu"
    return PredictResult(
        model=f"{args.model} ({model.location})",
        data=inputs.description,
        out=out,
        predicted=table.num_rows,
        skipped=skipped,
        ignored=inputs.ignored,
        wall_time_s=time.time() - started,
        startup_s=loaded_s,
        actor_s=busy,
        device=device,
        layout=spec.layout,
    )


def gpu_concurrency(wanted: int) -> int:
    """Actors for ``--use-gpu``: ``wanted``, or as many as the cluster has GPUs (an actor waiting for a GPU that is
    not there would wait forever).

    Raises:
        UsageError: the cluster has no GPU.
    """
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus < 1:
        raise UsageError("--use-gpu: this Ray cluster has no GPU (drop --use-gpu to predict on its CPUs)")
    if gpus < wanted:
        print(f"note: --concurrency {wanted} but the cluster has {gpus} GPU(s): {gpus} actor(s)", flush=True)
    return min(wanted, gpus)


def _final_table(tables: list[Any]) -> Any:
    """One table, the top-k columns (JSON text) as lists again."""
    import pyarrow as pa

    table = pa.concat_tables(tables) if tables else pa.table({"path": pa.array([], pa.string())})
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    if "classes" in columns:
        columns["classes"] = [json.loads(value) for value in columns["classes"]]
        columns["probabilities"] = [json.loads(value) for value in columns["probabilities"]]
    return pa.table(columns)


def predict_main(argv: list[str] | None = None) -> int:
    """``jobs/predict.py``'s command line: 0 done, 2 a bad flag/input/model (one line), 1 a Ray failure, 130 Ctrl-C
    (143 SIGTERM)."""
    from fovea.console import install_console, quiet_environment, remove_console, verbose_wanted
    from fovea.jobs import run_and_report, run_stoppable
    from fovea.paths import fovea_home

    args = build_parser().parse_args(argv)
    try:
        check_args(args)
    except UsageError as err:
        print(f"predict: error: {err}", file=sys.stderr, flush=True)
        return 2
    verbose = verbose_wanted(False)
    if not verbose:
        quiet_environment(fovea_home())

    def call() -> PredictResult:
        print(f"fovea predict: {args.model} on {args.data}", flush=True)
        return run_prediction(args)

    install_console(verbose)
    try:
        return run_stoppable(
            "predict",
            lambda: run_and_report("predict", call, usage=(UsageError, ValueError), label="error"),
            on_stop=f"no predictions were written to {args.out}",
        )
    finally:
        remove_console()
