"""Benchmark ingest: clips/s (images/s) through fovea's Ray Data path against a torch DataLoader doing the same work.

Both decode and augment with the same code in the same number of worker processes and feed a consumer with no
model; the ratio of their throughputs comes from one run, with the peak memory (PSS) of each. For videos it then
decodes --rss-decodes clips in this process and prints the RSS as it goes (decord's memory must stay flat).

    python pipelines/bench_ingest.py --kind video demo
    python pipelines/bench_ingest.py --kind image ~/data/flowers-prepared --workers 4 --img-size 224
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("data", metavar="DATA", help="a prepared dataset folder, or 'demo' for the built-in set")
    parser.add_argument("--kind", choices=("video", "image"), required=True, help="what DATA holds")
    parser.add_argument("--workers", type=int, default=2, help="Ray CPUs = DataLoader worker processes")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the training split per path and round")
    parser.add_argument("--rounds", type=int, default=1, help="turns each path takes (ratios are medians over them)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size the consumer receives")
    parser.add_argument("--decode-batch-size", type=int, default=16, help="rows per Ray Data map_batches call")
    parser.add_argument("--img-size", type=int, default=64, help="crop side")
    parser.add_argument("--num-frames", type=int, default=8, help="video: frames per clip")
    parser.add_argument("--frame-interval", type=int, default=4, help="video: frames between sampled frames")
    parser.add_argument("--backend", choices=("decord", "pyav"), default="decord", help="video decoder")
    parser.add_argument("--decode-threads", type=int, default=1, help="decord threads per video")
    parser.add_argument(
        "--rss-decodes", type=int, default=2000, help="video: clips decoded for the RSS trace (0 = skip)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run both ingest paths, print their throughput, ratio and memory; returns the exit code."""
    args = parse_args(argv)
    from fovea.config import DataConfig
    from fovea.data import load_manifest

    if args.data == "demo":
        from fovea.data import ensure_demo_images, ensure_demo_videos

        data_dir = ensure_demo_videos() if args.kind == "video" else ensure_demo_images()
    else:
        data_dir = Path(args.data).expanduser()
    try:
        manifest = load_manifest(data_dir)
        if manifest.get("kind", "image") != args.kind:
            raise ValueError(f"{data_dir} holds a {manifest.get('kind', 'image')} dataset, not --kind {args.kind}")
        data_cfg = DataConfig(
            batch_size=args.batch_size,
            decode_batch_size=args.decode_batch_size,
            num_frames=args.num_frames,
            frame_interval=args.frame_interval,
            video_backend=args.backend,
            decode_threads=args.decode_threads,
            hflip=0.5,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    from fovea.data.bench import format_ingest, run_benchmark

    results = run_benchmark(
        manifest,
        data_cfg,
        kind=args.kind,
        img_size=args.img_size,
        workers=args.workers,
        epochs=args.epochs,
        rounds=args.rounds,
        rss_decodes=args.rss_decodes if args.kind == "video" else 0,
    )
    print(
        "\n"
        + format_ingest(
            results,
            kind=args.kind,
            where=str(data_dir),
            rows=manifest["splits"]["train"]["count"],
            workers=args.workers,
            batch=args.batch_size,
        )
    )
    if results.get("rss_trace"):
        trace = results["rss_trace"]
        print(
            f"  decoder RSS over {trace[-1][0]} clip decodes (MiB): "
            + " ".join(f"{count}:{rss:.0f}" for count, rss in trace[:: max(1, len(trace) // 10)])
        )
        print(f"  growth after the first 200 decodes: {results['rss_growth_mb']:+.1f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    from fovea.jobs import run_stoppable

    # Ctrl-C, SIGTERM: one line, exit 130/143
    sys.exit(run_stoppable("bench_ingest", main, on_stop="no figures were written"))
