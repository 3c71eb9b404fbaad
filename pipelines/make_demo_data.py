"""Generate the built-in synthetic demo data as raw files (prepare it with pipelines/prepare_images.py).

python pipelines/make_demo_data.py images /tmp/demo-raw --size 64 --train-per-class 500
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Generate the requested data and print what was written; returns the exit code."""
    args = parse_args(argv)
    from fovea.data.demo import DEMO_CLASSES, make_demo_images

    start = time.perf_counter()
    try:
        out = make_demo_images(
            args.out,
            size=args.size,
            train_per_class=args.train_per_class,
            val_per_class=args.val_per_class,
            seed=args.seed,
        )
    except (FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    classes = len(DEMO_CLASSES)
    print(
        f"wrote {classes * args.train_per_class} train + {classes * args.val_per_class} val images "
        f"({classes} classes, {args.size}x{args.size} JPEG) to {out} in {time.perf_counter() - start:.1f} s"
    )
    print(f"next: python pipelines/prepare_images.py {out} OUT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
