"""Prepare an image classification dataset: validate every image and write Parquet shards plus manifest.json.

SRC is a folder of class subfolders, a folder whose train/ and val/ hold class subfolders, or a CSV/JSON list of
path,label[,split]. Corrupt files are skipped and listed in the manifest; the job still succeeds. Every entry of SRC
ends up prepared, rejected (a reason), ignored (hidden, outside class folders) or listed as a duplicate; a summary
line per category is printed at the end. Links are followed (each real file prepared once, loops refused), and
files of equal contents are kept in one split (--dedup).

    python pipelines/prepare_images.py ~/data/flowers ~/data/flowers-prepared --max-side 256
    ray job submit --working-dir . -- python pipelines/prepare_images.py /shared/raw /shared/prepared
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("src", metavar="SRC", help="class-folder tree, train/val tree, or CSV/JSON list")
    parser.add_argument("out", metavar="OUT", help="output folder for shards and manifest.json")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="val share per class when SRC has no splits")
    parser.add_argument("--seed", type=int, default=0, help="seed of the val split and row order")
    parser.add_argument("--shard-rows", type=int, default=1000, help="about how many images per Parquet shard")
    parser.add_argument(
        "--max-side",
        type=int,
        default=2048,
        help="shrink images with a longer side to this long side, re-encoded as JPEG (PNG when transparent); 0 keeps "
        "every size",
    )
    parser.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of shrunk images")
    from fovea.data.check import DEFAULT_MAX_FILE_MB
    from fovea.data.write import add_output_arguments

    parser.add_argument(
        "--max-file-mb",
        type=float,
        default=DEFAULT_MAX_FILE_MB,
        help="reject files larger than this (MiB) without reading them (default: %(default)s)",
    )

    add_output_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the preparation and print a summary; returns the exit code."""
    args = parse_args(argv)
    if not Path(args.src).expanduser().exists():
        print(f"error: SRC not found: {args.src}", file=sys.stderr)
        return 2

    from fovea.data import prepare_images
    from fovea.data.manifest import describe_manifest, summary_lines
    from fovea.data.write import script_console

    start = time.perf_counter()
    with script_console(args.verbose):
        try:
            # All argument, SRC-layout and OUT checks happen inside before Ray starts.
            manifest = prepare_images(
                args.src,
                args.out,
                val_fraction=args.val_fraction,
                seed=args.seed,
                shard_rows=args.shard_rows,
                max_side=args.max_side,
                jpeg_quality=args.jpeg_quality,
                max_file_mb=args.max_file_mb,
                overwrite=args.overwrite,
                num_cpus=args.num_cpus,
                dedup=args.dedup,
            )
        except (FileNotFoundError, FileExistsError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

        print(f"prepared {args.out} in {time.perf_counter() - start:.1f} s")
        print(describe_manifest(manifest))
        print("\n".join(summary_lines(manifest)))
    return 0


if __name__ == "__main__":
    from fovea.data.write import STOPPED_PREPARATION
    from fovea.jobs import run_stoppable

    # Ctrl-C, SIGTERM: one line, exit 130/143
    sys.exit(run_stoppable("prepare_images", main, on_stop=STOPPED_PREPARATION))
