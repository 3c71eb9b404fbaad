"""CPU time per training image of fovea's image decoding, direct path against torchvision's pipeline, one process.

    python benchmarks/decode_images.py PREPARED_DIR [--img-size 224] [--rows 256] [--repeats 5]

Decodes the first ``--rows`` training rows of a prepared image set with ``DecodeImages`` (RandomResizedCrop + flip,
no RandAugment) both ways, as a Ray Data task does (one batch) and as a DataLoader worker does (one row per call),
alternating the two paths ``--repeats`` times, and prints the median milliseconds per image of each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pyarrow.parquet as pq

from fovea.data import load_manifest
from fovea.data.transforms import DecodeImages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prepared", help="a prepared image dataset (its manifest.json folder)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    shards = load_manifest(args.prepared)["splits"]["train"]["shards"]
    table = pq.read_table(shards[0], columns=["image", "label"]).slice(0, args.rows)
    batch = {
        "image": np.array(table.column("image").to_pylist(), dtype=object),
        "label": np.asarray(table.column("label").to_pylist()),
    }
    rows = [{key: value[i : i + 1] for key, value in batch.items()} for i in range(len(batch["label"]))]

    decoders = {}
    for name, direct in (("direct", True), ("torchvision", False)):
        decoders[name] = DecodeImages(args.img_size, train=True)
        decoders[name].direct = direct
    timings: dict[str, list[float]] = {f"{name}, {mode}": [] for name in decoders for mode in ("batch", "row")}
    for _ in range(args.repeats):
        for name, decode in decoders.items():
            decode(batch)  # warm
            start = time.perf_counter()
            decode(batch)
            timings[f"{name}, batch"].append((time.perf_counter() - start) / len(rows) * 1e3)
            start = time.perf_counter()
            for row in rows:
                decode(row)
            timings[f"{name}, row"].append((time.perf_counter() - start) / len(rows) * 1e3)
    for key, values in timings.items():
        spread = f"{min(values):.3f}-{max(values):.3f}"
        print(f"{key:<20} {statistics.median(values):.3f} ms/image (median of {args.repeats}; {spread})")


if __name__ == "__main__":
    main()
