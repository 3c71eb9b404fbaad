"""Benchmark training throughput: a plain PyTorch loop against fovea's full path (Ray Train + Ray Data), one device.

python jobs/benchmark.py                                   # GPU: ViT-B/16 bs256 224 px; CPU: a micro ViT at 32 px
python jobs/benchmark.py --model swin_tiny_patch4_window7_224 --batch-size 256
python jobs/benchmark.py --model mvit_base_16x4 --batch-size 16 train.grad_checkpointing=true
python jobs/benchmark.py --ingest-only --workers 2          # the data path alone: Ray Data against a DataLoader
python jobs/benchmark.py --ingest-only --model mvit_base_16x4 --backends-only data.path=PREPARED   # video decoders
python jobs/benchmark.py data.jpeg_decode=device            # JPEGs decoded on the GPU (nvJPEG)

Both paths run in this one process's run, on the same device, with the same model, batch and precision; the
printout gives samples/s, their ratio, MFU (FLOPs counted by FlopCounterMode over a forward and backward pass,
against a measured matmul peak) and peak memory. Any ``section.field=value`` sets the run's config (as in the
training jobs); without ``data.path`` the built-in demo set is generated at the benchmark's size and cached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", metavar="section.field=value", help="config overrides")
    parser.add_argument("--model", help="model name (default: vit_base_patch16_224 on GPU, vit_micro_patch4_32 on CPU)")
    parser.add_argument("--batch-size", type=int, help="batch size (default: 256 on GPU, 32 on CPU)")
    parser.add_argument("--img-size", type=int, help="input side (default: 224 on GPU, 32 on CPU)")
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    parser.add_argument("--steps", type=int, default=30, help="timed steps (also the full path's steps per epoch)")
    parser.add_argument("--warmup", type=int, default=5, help="plain loop: untimed steps first (compilation)")
    parser.add_argument("--epochs", type=int, default=2, help="full path: epochs; the last one is measured")
    parser.add_argument("--val-samples", type=int, default=64, help="full path: validation samples of the demo set")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="use this peak instead of measuring a matmul")
    parser.add_argument("--plain-only", action="store_true", help="only the plain loop (no Ray)")
    parser.add_argument("--ingest-only", action="store_true", help="only the data path: Ray Data vs a DataLoader")
    parser.add_argument("--workers", type=int, default=0, help="ingest: Ray CPUs = DataLoader processes (0 = all)")
    parser.add_argument("--rounds", type=int, default=1, help="ingest: turns each path takes (ratios are medians)")
    parser.add_argument(
        "--backends",
        default="decord,pyav,torchcodec",
        help="ingest of videos: decoders compared on the same clips (clips/s, CPU s per clip); 'none' skips it",
    )
    parser.add_argument("--backends-only", action="store_true", help="ingest of videos: only the decoder comparison")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return parser.parse_intermixed_args(argv)  # overrides may come before or after the options


def build_benchmark_config(args: argparse.Namespace, gpu: bool):  # noqa: ANN201 (fovea.config.Config)
    """The run's config: the benchmark's model and sizes, then the command line's overrides."""
    from fovea.config import build_config, parse_override, set_path
    from fovea.models import is_video_model

    model = args.model or ("vit_base_patch16_224" if gpu else "vit_micro_patch4_32")
    img_size = args.img_size or (224 if gpu else 32)
    tree: dict = {
        "model": {"name": model, "img_size": img_size},
        "data": {
            "batch_size": args.batch_size or (256 if gpu else 32),
            "demo_size": max(64, round(img_size * 1.143)),  # 256 px JPEGs for 224 px crops, as ImageNet's
            "demo_video_size": max(64, 32 * round(img_size * 1.143 / 32)),
            "shuffle_buffer": 0,
        },
        "scaling": {"use_gpu": gpu, "num_workers": 1},
    }
    if is_video_model(model):
        tree["data"]["demo_video_frames"] = 64  # room for 16 x 4 clips
    for text in args.overrides:
        path, value = parse_override(text)
        set_path(tree, path, value)
    return build_config([tree])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code (2 for a configuration problem)."""
    args = parse_args(argv)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    from fovea.benchmark import format_report, pick_device, run
    from fovea.config import ConfigError

    device = pick_device(args.device)
    try:
        cfg = build_benchmark_config(args, gpu=device.type == "cuda")
        if args.ingest_only:
            results = ingest(cfg, args)
        else:
            results = run(
                cfg,
                device=device,
                steps=args.steps,
                warmup=args.warmup,
                epochs=args.epochs,
                val_samples=args.val_samples,
                peak_flops=args.peak_tflops * 1e12,
                skip_fovea=args.plain_only,
            )
            print(format_report(results), flush=True)
    except (ConfigError, FileNotFoundError) as error:
        print(f"benchmark: config error: {error}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def ingest(cfg, args: argparse.Namespace) -> dict:  # noqa: ANN001
    """``--ingest-only``: the training split through Ray Data and through a DataLoader, same work, same cores."""
    import math

    from fovea.benchmark import benchmark_dataset
    from fovea.config import ConfigError
    from fovea.data import load_manifest
    from fovea.data.bench import compare_backends, format_backends, format_ingest, run_benchmark
    from fovea.data.video import VIDEO_BACKENDS

    data_dir = cfg.data.path or benchmark_dataset(cfg, samples=cfg.data.batch_size * args.steps, val_samples=8)
    manifest = load_manifest(data_dir)
    kind = manifest.get("kind", "image")
    workers = args.workers or os.cpu_count() or 1
    count = manifest["splits"]["train"]["count"]
    if args.backends_only and kind != "video":
        raise ConfigError(f"--backends-only compares video decoders; {data_dir} holds images")
    backends = [] if args.backends == "none" or kind != "video" else args.backends.split(",")
    unknown = sorted(set(backends) - set(VIDEO_BACKENDS))
    if unknown:
        raise ConfigError(f"--backends: unknown video backend(s) {', '.join(unknown)}: expected {VIDEO_BACKENDS}")
    decoders = {}
    if backends:
        table = compare_backends(
            manifest,
            cfg.data,
            img_size=cfg.model.img_size,
            backends=backends,
            workers=workers,
            passes=max(1, args.epochs),
            rounds=args.rounds,
        )
        spec = f"{cfg.data.num_frames}x{cfg.data.frame_interval} {cfg.data.sampling} clips of {cfg.model.img_size} px"
        print(format_backends(table, where=str(data_dir), rows=count, workers=workers, spec_text=spec), flush=True)
        decoders = {"backends": table}
    if args.backends_only:
        return {**decoders, "rows": count}
    results = run_benchmark(
        manifest,
        cfg.data,
        kind=kind,
        img_size=cfg.model.img_size,
        workers=workers,
        epochs=max(2, args.epochs),
        rounds=args.rounds,
    )
    print(
        format_ingest(results, kind=kind, where=str(data_dir), rows=count, workers=workers, batch=cfg.data.batch_size)
    )
    results.update(decoders, rows=count)
    results["steps_per_epoch"] = math.floor(count / cfg.data.batch_size)
    return results


if __name__ == "__main__":
    from fovea.jobs import run_stoppable

    # Ctrl-C, SIGTERM: one line, exit 130/143
    sys.exit(run_stoppable("benchmark", main, on_stop="no figures were written"))
