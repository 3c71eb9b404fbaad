"""``fovea weights ...``: inspect a published weights file, and import one into the registry."""

from __future__ import annotations

import argparse
from typing import Any

from fovea.cli.format import print_json, render_pairs


def _rounded(values: list[float] | None) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")" if values else "-"


def _inspect_pairs(found: dict[str, Any]) -> list[tuple[str, Any]]:
    classes = found["classes"]
    shown = ", ".join(classes[:5]) + (f", ... ({len(classes)})" if len(classes) > 5 else "") if classes else "-"
    clip = "-"
    if found["num_frames"]:
        clip = f"{found['num_frames']} frames" + (
            f" x interval {found['frame_interval']}" if found["frame_interval"] else ""
        )
    return [
        ("file", found["path"]),
        ("layout", f"{found['layout']} ({found['origin']})"),
        ("family", found["family"] or "-"),
        ("fovea model", found["suggested_model"] or "-"),
        ("model args", ", ".join(f"{k}={v}" for k, v in found["model_args"].items()) or "-"),
        ("classes", found["num_classes"] if found["num_classes"] is not None else "- (no classifier)"),
        ("class names", shown),
        ("clip", clip),
        ("image size", found["img_size"] or "-"),
        ("mean / std", f"{_rounded(found['mean'])} / {_rounded(found['std'])}" if found["mean"] else "- (the model's)"),
        ("tensors", found["tensors"]),
        ("parameters", f"{found['parameters']:,} ({found['parameters'] / 1e6:.2f}M)"),
        ("sha256", found["sha256"]),
    ]


def fine_tune_line(model: str, metadata: dict[str, Any], reference: str) -> str:
    """The config overrides that build the imported architecture again and start from ``reference``."""
    create = metadata["create_kwargs"]
    extra = {k: v for k, v in create.items() if k not in ("num_classes", "img_size", "num_frames")}
    parts = [f"model.name={model}", f"model.checkpoint={reference}", f"model.img_size={metadata['img_size']}"]
    if metadata.get("num_frames"):
        parts.append(f"data.num_frames={metadata['num_frames']}")
        if metadata.get("frame_interval"):
            parts.append(f"data.frame_interval={metadata['frame_interval']}")
    if extra:
        parts.append("'model.kwargs={" + ", ".join(f"{k}: {v}" for k, v in extra.items()) + "}'")
    return " ".join(parts)


def weights_inspect(args: argparse.Namespace) -> int:
    """``fovea weights inspect FILE``."""
    from fovea.weights import inspect_weights

    found = inspect_weights(args.file)
    if args.json:
        print_json(found)
    else:
        print(render_pairs(_inspect_pairs(found)))
    return 0


def weights_import(args: argparse.Namespace) -> int:
    """``fovea weights import FILE --model NAME --register NAME``."""
    from fovea.importing import build_from_weights, register_imported, save_imported

    module, metadata, described = build_from_weights(
        args.file, args.model, img_size=args.img_size, num_frames=args.num_frames
    )
    for line in module.load_report.lines():
        print(line)
    if args.out:
        print(f"model folder: {save_imported(args.out, module, metadata)}")
    from fovea.track import resolve_tracking_uri

    uri = resolve_tracking_uri(getattr(args, "tracking_uri", None) or "")  # a new store is made, as a job makes one
    run_id, version = register_imported(
        module, metadata, described, name=args.register, tracking_uri=uri, experiment=args.experiment, alias=args.alias
    )
    if args.json:
        print_json({"name": args.register, "version": version, "alias": args.alias, "run_id": run_id, **described})
        return 0
    print(f"registered {args.register} version {version} (@{args.alias}) in {uri}, import run {run_id}")
    print(f"fine-tune from it: {fine_tune_line(args.model, metadata, f'models:/{args.register}@{args.alias}')}")
    return 0


def add_weights_commands(group: Any, command: Any) -> None:
    """The ``weights`` group's commands, on the parser ``fovea.cli.main`` builds."""
    inspect = command(group, "inspect", weights_inspect, "what a weights file is: layout, family, classes, clip, size")
    inspect.add_argument("file", metavar="FILE", help="a weights file, a transformers folder or a fovea model folder")
    importing = command(
        group, "import", weights_import, "convert a weights file once and register it (alias base) in MLflow"
    )
    importing.add_argument("file", metavar="FILE")
    importing.add_argument("--model", required=True, help="the fovea model name to build (see `fovea weights inspect`)")
    importing.add_argument("--register", required=True, metavar="NAME", help="registered model name")
    importing.add_argument("--alias", default="base", help="alias pointed at the new version (default: base)")
    importing.add_argument("--experiment", default="fovea-imports", help="experiment of the import run")
    importing.add_argument("--img-size", type=int, default=None, help="build for this resolution (default: the file's)")
    importing.add_argument("--num-frames", type=int, default=None, help="video: build for this clip length")
    importing.add_argument("--out", default="", metavar="DIR", help="also write a fovea model folder to DIR")
