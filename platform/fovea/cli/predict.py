"""``fovea predict MODEL FILE...``: a few files through a model, the top-k classes in a table (or JSON).

The model loads as evaluation and ``jobs/predict.py`` load it (``fovea.sources``: the registry's pickle-free copy,
a checkpoint or a model folder) and each file decodes through ``fovea.predict`` with the model's own settings. A
file that does not read or decode gets its reason in the table; the exit status is then 2. Imports stay inside the
handler: ``fovea --help`` and the other commands do not load torch.
"""

from __future__ import annotations

import argparse
from typing import Any

from fovea.cli.format import Column, CommandError, print_json, render_table, store_uri


def add_predict_command(groups: Any, command: Any) -> None:
    """Register ``fovea predict`` on the top-level subparsers (``command`` is ``build_parser``'s helper)."""
    predict = command(groups, "predict", predict_files, "the top-k classes a model gives a few image or video files")
    predict.add_argument("model", metavar="MODEL", help="models:/NAME@ALIAS, NAME@ALIAS, a checkpoint or model folder")
    predict.add_argument("files", nargs="+", metavar="FILE")
    predict.add_argument("--top-k", type=int, default=3, help="classes per file (default: 3)")
    predict.add_argument(
        "--views", choices=("default", "single", "multi"), default="default", help="default: video multi, image single"
    )


def predict_files(args: argparse.Namespace) -> int:
    """The handler: 0 when every file was predicted, 2 when one could not be (its reason in the table)."""
    from fovea.errors import first_line
    from fovea.models import is_video_model
    from fovea.predict.predictor import Predictor
    from fovea.sources import load_model

    if args.top_k < 1:
        raise CommandError(f"--top-k must be at least 1, not {args.top_k}")
    uri = store_uri(args) if args.model.startswith("models:/") or "@" in args.model else ""
    try:
        loaded = load_model(args.model, uri)
    except (ValueError, OSError, RuntimeError, KeyError) as err:
        raise CommandError(f"{args.model}: {first_line(err)}") from None
    info = {**loaded.inputs, "model_name": loaded.model_name, "classes": loaded.classes}
    predictor = Predictor.from_info(loaded.module, info, views=args.views)
    predictions = predictor.predict(list(args.files), top_k=args.top_k)
    rows: list[dict[str, Any]] = [
        {
            "file": path,
            "label": prediction.label,
            "probability": prediction.probability if prediction.classes else None,
            "top": [
                {"class": name, "probability": value}
                for name, value in zip(prediction.classes, prediction.probabilities, strict=True)
            ],
            "error": prediction.error,
        }
        for path, prediction in zip(args.files, predictions, strict=True)
    ]
    failed = sum(1 for row in rows if row["error"])
    if args.json:
        print_json({"model": loaded.location, "views": predictor.spec.layout, "predictions": rows})
        return 2 if failed else 0
    kind = "clips" if is_video_model(loaded.model_name) else "images"
    print(f"{args.model} ({loaded.location}), {kind}, views {predictor.spec.layout}")

    def top(row: dict[str, Any]) -> str:
        if row["error"]:
            return f"error: {row['error']}"
        return ", ".join(f"{entry['class']} {100 * entry['probability']:.1f}%" for entry in row["top"])

    columns = [Column("FILE", "file", width=40, keep_end=True), Column(f"TOP-{args.top_k}", top, width=100)]
    print(render_table(rows, columns))
    if failed:
        print(f"{failed} of {len(rows)} files could not be read or decoded")
    return 2 if failed else 0
