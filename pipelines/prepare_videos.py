"""Prepare a video classification dataset: probe every video (decord, else PyAV), write Parquet shards + manifest.json.

SRC is a folder of class subfolders, a folder whose train/ and val/ hold class subfolders, or a CSV/JSON list of
path,label[,split][,start,end] (Kinetics-style; time_start/time_end work too). Unusable files are skipped and
listed in the manifest with a reason; the job still succeeds. As for images, every entry of SRC is accounted for
(prepared, rejected, ignored, duplicate) and files of equal contents are kept in one split (--dedup).

    python pipelines/prepare_videos.py ~/data/kinetics-mini ~/data/kinetics-mini-prepared
    python pipelines/prepare_videos.py train.csv /shared/k400-prepared --by-reference
    python pipelines/prepare_videos.py ~/data/clips ~/data/clips-decoded --pre-decode --pre-decode-size 128
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
    parser.add_argument("--shard-rows", type=int, default=100, help="about how many videos per Parquet shard")
    store = parser.add_mutually_exclusive_group()
    store.add_argument(
        "--by-reference", action="store_true", help="store only each video's path/URI, read at training time"
    )
    store.add_argument("--pre-decode", action="store_true", help="store resized uint8 frames instead of encoded bytes")
    parser.add_argument("--pre-decode-size", type=int, default=128, help="--pre-decode: short side of stored frames")
    parser.add_argument(
        "--pre-decode-frames", type=int, default=0, help="--pre-decode: frames kept per video, evenly spread (0 = all)"
    )
    parser.add_argument("--min-frames", type=int, default=8, help="videos with fewer frames count as short")
    parser.add_argument(
        "--too-short",
        choices=("pad", "reject"),
        default="pad",
        help="short videos: keep them (clips loop over their frames) or reject them",
    )
    from fovea.data.prepare_video import DEFAULT_MAX_VIDEO_MB
    from fovea.data.write import add_output_arguments

    parser.add_argument(
        "--max-file-mb",
        type=float,
        default=DEFAULT_MAX_VIDEO_MB,
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

    from fovea.data import prepare_videos
    from fovea.data.manifest import describe_manifest, summary_lines
    from fovea.data.write import script_console

    storage = "reference" if args.by_reference else "decoded" if args.pre_decode else "encoded"
    start = time.perf_counter()
    with script_console(args.verbose):
        try:
            # All argument, SRC-layout and OUT checks happen inside before Ray starts.
            manifest = prepare_videos(
                args.src,
                args.out,
                val_fraction=args.val_fraction,
                seed=args.seed,
                shard_rows=args.shard_rows,
                storage=storage,
                min_frames=args.min_frames,
                too_short=args.too_short,
                pre_decode_size=args.pre_decode_size,
                pre_decode_frames=args.pre_decode_frames,
                overwrite=args.overwrite,
                num_cpus=args.num_cpus,
                dedup=args.dedup,
                max_file_mb=args.max_file_mb,
            )
        except (FileNotFoundError, FileExistsError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

        print(f"prepared {args.out} ({storage} videos) in {time.perf_counter() - start:.1f} s")
        print(describe_manifest(manifest))
        print("\n".join(summary_lines(manifest)))
    return 0


if __name__ == "__main__":
    from fovea.data.write import STOPPED_PREPARATION
    from fovea.jobs import run_stoppable

    # Ctrl-C, SIGTERM: one line, exit 130/143
    sys.exit(run_stoppable("prepare_videos", main, on_stop=STOPPED_PREPARATION))
