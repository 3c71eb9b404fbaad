"""Generate the built-in synthetic demo data as raw files (prepare it with pipelines/prepare_images.py).

python pipelines/make_demo_data.py images /tmp/demo-raw --size 64 --train-per-class 500
python pipelines/make_demo_data.py videos /tmp/demo-videos --size 96 --num-frames 32 --train-per-class 100
"""

from __future__ import annotations

import argparse
import sys
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line: the kind of data, then its options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    images = kinds.add_parser(
        "images",
        help="8 shape classes as JPEG files OUT/<split>/<class>/<index>.jpg",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    images.add_argument("out", metavar="OUT", help="output folder (must not exist or be empty)")
    images.add_argument("--size", type=int, default=64, help="image side in pixels")
    images.add_argument("--train-per-class", type=int, default=500, help="training images per class")
    images.add_argument("--val-per-class", type=int, default=100, help="validation images per class")
    images.add_argument("--seed", type=int, default=0, help="seed of the whole set")
    videos = kinds.add_parser(
        "videos",
        help="8 motion classes as H.264 MP4 files OUT/<split>/<action>/<index>.mp4",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    videos.add_argument("out", metavar="OUT", help="output folder (must not exist or be empty)")
    videos.add_argument("--size", type=int, default=96, help="frame side in pixels (even)")
    videos.add_argument("--num-frames", type=int, default=32, help="frames per video")
    videos.add_argument("--fps", type=int, default=16, help="frames per second")
    videos.add_argument("--train-per-class", type=int, default=100, help="training videos per class")
    videos.add_argument("--val-per-class", type=int, default=25, help="validation videos per class")
    videos.add_argument("--seed", type=int, default=0, help="seed of the whole set")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Generate the requested data and print what was written; returns the exit code."""
    args = parse_args(argv)
    common = dict(
        size=args.size, train_per_class=args.train_per_class, val_per_class=args.val_per_class, seed=args.seed
    )
    if args.kind == "videos":
        from fovea.data.demo_video import DEMO_ACTIONS as classes
        from fovea.data.demo_video import make_demo_videos as make

        common.update(num_frames=args.num_frames, fps=args.fps)
        what = (
            f"videos ({len(classes)} classes, {args.size}x{args.size}, {args.num_frames} frames at {args.fps} fps, "
            "H.264 MP4)"
        )
    else:
        from fovea.data.demo import DEMO_CLASSES as classes
        from fovea.data.demo import make_demo_images as make

        what = f"images ({len(classes)} classes, {args.size}x{args.size} JPEG)"
    counts = f"{len(classes) * args.train_per_class} train + {len(classes) * args.val_per_class} val {what}"
    print(f"making {counts} in {args.out} ...", flush=True)
    start = time.perf_counter()
    try:
        out = make(args.out, **common)
    except (FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {counts} to {out} in {time.perf_counter() - start:.1f} s")
    if args.kind == "images":
        print(f"next: python pipelines/prepare_images.py {out} OUT")
    return 0


if __name__ == "__main__":
    from fovea.data.write import STOPPED_PREPARATION
    from fovea.jobs import run_stoppable

    # Ctrl-C, SIGTERM: one line, exit 130/143
    sys.exit(run_stoppable("make_demo_data", main, on_stop=STOPPED_PREPARATION))
