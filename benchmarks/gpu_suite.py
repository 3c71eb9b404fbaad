"""Every issue-9 figure on a GPU machine, group by group: each run is one ``jobs/benchmark.py`` command.

    python benchmarks/gpu_suite.py --list                        # the runs and their commands
    python benchmarks/gpu_suite.py images --out "$OUT"   # ViT-B/16 (eager, compiled, max-autotune, nvJPEG), DeiT-S,
                                                         # Swin-T, CvT-13
    python benchmarks/gpu_suite.py video --out "$OUT"    # MViT-B 16x4, TimeSformer-divided 8x224, ViViT-FE 32x224
    python benchmarks/gpu_suite.py ingest --out "$OUT"   # Ray Data against DataLoaders, images and clips

On the lent GPU machine (see DEVELOPERS.md for the bundle): ``source .gpu/install.sh && PYTHONPATH=platform python
benchmarks/gpu_suite.py images --out $OUT``. A lent machine runs one command for at most 10 minutes: ``--only NAME``
(repeatable) splits a group across calls, ``--timeout`` stops a run that would take the rest.
Each run writes ``NAME.json`` and ``NAME.log`` under ``--out``; the group ends with ``summary.md``, a table of
samples/s, MFU, peak memory and ratios to paste into ``benchmarks/RESULTS.md`` with the command that made it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIT_B = ["--model", "vit_base_patch16_224", "--batch-size", "256"]
SWIN_T = ["--model", "swin_tiny_patch4_window7_224", "--batch-size", "256"]
TIMESFORMER = ["--model", "timesformer_base_8x224_divided", "--batch-size", "32"]
MVIT_16X4 = ["--model", "mvit_base_16x4", "data.num_frames=16", "data.frame_interval=4"]
MVIT_B = [*MVIT_16X4, "--batch-size", "16"]

# name -> (group, benchmark arguments); sizes are the (its plain-loop table was measured at these)
RUNS: dict[str, tuple[str, list[str]]] = {
    "vit_b_eager": ("images", [*VIT_B, "train.compile=false"]),
    "vit_b_compiled": ("images", VIT_B),
    "vit_b_max_autotune": ("images", [*VIT_B, "train.compile_mode=max-autotune"]),
    "vit_b_nvjpeg": ("images", [*VIT_B, "data.jpeg_decode=device"]),
    "deit_s": ("images", ["--model", "deit_small_patch16_224", "--batch-size", "512"]),
    "swin_t_eager": ("images", [*SWIN_T, "train.compile=false"]),
    "swin_t_compiled": ("images", SWIN_T),
    "cvt_13": ("images", ["--model", "cvt_13_224", "--batch-size", "256"]),
    "mvit_b_eager": ("video", [*MVIT_B, "train.compile=false"]),
    "mvit_b_compiled": ("video", MVIT_B),
    "mvit_b_checkpointed": ("video", [*MVIT_16X4, "--batch-size", "32", "train.grad_checkpointing=true"]),
    "mvit_b_nvdec": ("video", [*MVIT_B, "data.video_decode=device"]),  # clips decoded by NVDEC (issue 25)
    "timesformer_divided": ("video", [*TIMESFORMER, "data.num_frames=8", "data.frame_interval=8"]),
    "vivit_fe": (
        "video",
        ["--model", "vivit_b16x2_fe", "--batch-size", "16", "data.num_frames=32", "data.frame_interval=2"],
    ),
    "ingest_images": ("ingest", ["--ingest-only", "--batch-size", "256", "--steps", "80", "--rounds", "2"]),
    "ingest_mvit": ("ingest", ["--ingest-only", *MVIT_B, "--steps", "50", "--rounds", "2"]),
}


def command(name: str, out: Path) -> list[str]:
    """The benchmark command of one run, writing its JSON under ``out``."""
    return [sys.executable, str(ROOT / "jobs" / "benchmark.py"), *RUNS[name][1], "--json", str(out / f"{name}.json")]


def summarize(names: list[str], out: Path) -> str:
    """A Markdown table of the runs' JSON results (missing ones say so)."""
    lines = ["| run | path | samples/s | MFU | peak memory | ratio |", "|---|---|---|---|---|---|"]
    for name in names:
        path = out / f"{name}.json"
        if not path.exists():
            lines.append(f"| {name} | (no result: see {name}.log) | | | | |")
            continue
        report = json.loads(path.read_text())
        if "ratio_persistent" in report:  # --ingest-only
            ratios = f"{report['ratio']:.2f}x / {report['ratio_persistent']:.2f}x"  # against the two DataLoaders
            for index, item in enumerate(report["paths"]):
                rate, ratio = f"{item['warm_items_per_s']:.1f}", ratios if index == 0 else ""
                lines.append(f"| {name} | {item['name']} | {rate} | | {item['peak_mb']:.0f} MiB PSS | {ratio} |")
            continue
        for index, item in enumerate(report["paths"]):
            ratio = f"{report['ratio']:.3f}" if index == 1 and "ratio" in report else ""
            lines.append(
                f"| {name} | {item['name']} | {item['samples_per_s']:.1f} | {100 * item['mfu']:.1f}% "
                f"| {item['peak_memory_mb']:.0f} MiB | {ratio} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("group", nargs="?", choices=["images", "video", "ingest", "all"], default="all")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="just this run (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("benchmark-out"), help="folder for JSON, logs, summary")
    parser.add_argument("--timeout", type=float, default=540, help="seconds per run before it is stopped")
    parser.add_argument("--list", action="store_true", help="print the runs and their commands, run nothing")
    args = parser.parse_args(argv)

    unknown = [name for name in args.only if name not in RUNS]
    if unknown:
        parser.error(f"unknown run(s) {', '.join(unknown)}; known: {', '.join(RUNS)}")
    names = args.only or [name for name, (group, _) in RUNS.items() if args.group in ("all", group)]
    if args.list:
        for name in names:
            print(f"{name:<22} {RUNS[name][0]:<7} python jobs/benchmark.py {' '.join(RUNS[name][1])}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in names:
        start = time.perf_counter()
        with open(args.out / f"{name}.log", "w") as log:
            try:
                code = subprocess.run(command(name, args.out), stdout=log, stderr=subprocess.STDOUT,
                                      timeout=args.timeout, cwd=ROOT).returncode  # fmt: skip
            except subprocess.TimeoutExpired:
                code = "timeout"
        failed += code != 0
        print(f"{name}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
    summary = summarize(names, args.out)
    (args.out / "summary.md").write_text(summary + "\n")
    print(summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
