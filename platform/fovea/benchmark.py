"""Training throughput: a plain PyTorch loop on synthetic device data against fovea's full path, on one device.

The **baseline** is what users run instead of fovea: the model, synthetic inputs already on the device, bf16
autocast (where ``train.precision`` gives it), fused AdamW, ``torch.compile`` when ``train.compile`` turns it on,
nothing else: no data loading, no evaluation, no logging. Its samples/s is the ceiling for the model and batch.

**fovea's full path** is a real training run: ``run_training`` with one Ray Train worker, Ray Data streaming the
prepared shards (decoded and augmented on CPU, or JPEGs decoded on the device with ``data.jpeg_decode=device``),
fovea's train step (normalisation and mixup on the device, gradient clipping, the non-finite step check, the
LR schedule), validation and a checkpoint after every epoch. Its samples/s is the training loop's own rate over the
last epoch (``samples_per_sec``: samples over the time spent in the training loop, waits for data included;
validation and checkpointing sit between epochs and are not counted). Epochs before the last warm up the compiler
and the pipeline.

**MFU** (model FLOP utilisation) is samples/s x training FLOPs per sample / the device's peak. FLOPs per sample
are counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` over one forward and backward pass of the
real model (matmuls, convolutions and attention, 2 FLOPs per multiply-add; elementwise work is not counted, as in
PaLM's MFU definition). The peak is measured, not taken from a data sheet: a bf16 8192x8192 matmul on a GPU (784
TFLOP/s on the H200 the performance issue was measured on), a float32 2048x2048 matmul on a CPU.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fovea.config import Config, build_config, set_path
from fovea.console import format_rate
from fovea.models import create_model, is_video_model
from fovea.train.build import enable_grad_checkpointing
from fovea.train.device import autocast_dtype, compile_enabled, configure_device, peak_memory_mb


@dataclass
class PathResult:
    """One path's measurement."""

    name: str
    samples_per_s: float
    peak_memory_mb: float
    seconds: float
    samples: int
    mfu: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the GPU when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak_flops(device: torch.device, *, size: int = 0, repeats: int = 10) -> float:
    """FLOP/s of a square matmul: bf16 8192^3 on a GPU, float32 2048^3 on a CPU (the best of three timings)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = math.inf
    for _ in range(3):
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * repeats / best


def input_shape(cfg: Config) -> tuple[int, ...]:
    """One sample's input: ``(3, S, S)`` images or ``(3, T, S, S)`` clips."""
    size = cfg.model.img_size
    if is_video_model(cfg.model.name):
        return (3, cfg.data.num_frames, size, size)
    return (3, size, size)


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The model the run trains: the architecture fovea records for it (``model_create_args``), with the run's
    dropout and activation checkpointing, as the worker builds it."""
    from fovea.recipe import model_create_args

    model = create_model(
        cfg.model.name,
        drop_rate=cfg.model.drop_rate,
        drop_path_rate=cfg.model.drop_path_rate,
        **model_create_args(cfg, num_classes=num_classes),
    )
    if cfg.train.grad_checkpointing:
        enable_grad_checkpointing(model, cfg.model.name)
    return model


def _cpu_sdpa_flops(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(
    grad: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad, query, key, value)


def count_train_flops(cfg: Config, num_classes: int, device: torch.device, batch: int = 2) -> float:
    """Training FLOPs per sample (forward + backward), counted by ``FlopCounterMode`` on a batch of ``batch``."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(cfg, num_classes).to(device)
    if cfg.train.grad_checkpointing:
        model.set_grad_checkpointing(False)  # the recomputed forward is overhead, not model FLOPs
    inputs = torch.randn(batch, *input_shape(cfg), device=device)
    dtype = autocast_dtype(cfg.train.precision, device)
    aten = torch.ops.aten
    # FlopCounterMode knows the GPU attention kernels but not the CPU one: without these, attention goes uncounted
    cpu_attention = {
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
    }
    counter = FlopCounterMode(display=False, custom_mapping=cpu_attention)
    with counter, torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        model(inputs).float().sum().backward()
    return counter.get_total_flops() / batch


def plain_loop(cfg: Config, num_classes: int, device: torch.device, *, steps: int, warmup: int) -> PathResult:
    """The baseline: train on one synthetic batch already on the device; samples/s over ``steps`` timed steps."""
    torch.manual_seed(0)
    model = build_model(cfg, num_classes).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    if compile_enabled(cfg.train.compile, device):
        model = torch.compile(model, mode=cfg.train.compile_mode)
    batch = cfg.data.batch_size
    inputs = torch.randn(batch, *input_shape(cfg), device=device)
    targets = torch.randint(0, num_classes, (batch,), device=device)
    dtype = autocast_dtype(cfg.train.precision, device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = time.perf_counter() - start
    return PathResult("plain loop", steps * batch / seconds, peak_memory_mb(device), seconds, steps * batch)


def benchmark_dataset(cfg: Config, samples: int, val_samples: int) -> Path:
    """The built-in demo set (images or videos) sized for the benchmark: at least ``samples`` training samples."""
    from fovea.data import ensure_demo_images, ensure_demo_videos
    from fovea.data.demo import DEMO_CLASSES
    from fovea.data.demo_video import DEMO_ACTIONS

    if is_video_model(cfg.model.name):
        classes = len(DEMO_ACTIONS)
        return ensure_demo_videos(
            size=cfg.data.demo_video_size,
            num_frames=cfg.data.demo_video_frames,
            train_per_class=math.ceil(samples / classes),
            val_per_class=max(1, math.ceil(val_samples / classes)),
        )
    classes = len(DEMO_CLASSES)
    return ensure_demo_images(
        size=cfg.data.demo_size,
        train_per_class=math.ceil(samples / classes),
        val_per_class=max(1, math.ceil(val_samples / classes)),
    )


def fovea_path(cfg: Config, *, epochs: int, storage: Path) -> PathResult:
    """fovea's full path: a training run through Ray Train and Ray Data; the last epoch's rates."""
    from fovea.train.trainer import read_state, run_training

    overrides = {
        "train.epochs": epochs,
        "train.name": f"benchmark-{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        "train.storage_path": str(storage),
        "train.keep_checkpoints": 1,
        "track.enabled": False,
    }
    tree = cfg.model_dump(mode="json")
    for path, value in overrides.items():
        set_path(tree, path, value)
    run_cfg = build_config([tree])
    summary = run_training(run_cfg)
    history = json.loads(read_state(summary.checkpoint_path)["history"])
    last = history[-1]
    return PathResult(
        "fovea full path",
        float(last["samples_per_sec"]),
        float(last.get("peak_memory_mb", 0.0)),
        float(last["epoch_time_s"]),
        int(last["train_samples"]),
        details={"epochs": [round(float(row["samples_per_sec"]), 1) for row in history], "val_top1": last["val_top1"]},
    )


def run(
    cfg: Config,
    *,
    device: torch.device,
    steps: int,
    warmup: int,
    epochs: int,
    val_samples: int,
    peak_flops: float = 0.0,
    skip_fovea: bool = False,
) -> dict[str, Any]:
    """Both paths on ``device`` with the model and batch of ``cfg``; returns the figures as a dict."""
    configure_device(device)
    batch = cfg.data.batch_size
    if cfg.data.path:
        from fovea.data import load_manifest

        num_classes = len(load_manifest(cfg.data.path)["classes"])
    else:  # the demo set's
        from fovea.data.demo import DEMO_CLASSES
        from fovea.data.demo_video import DEMO_ACTIONS

        num_classes = len(DEMO_ACTIONS if is_video_model(cfg.model.name) else DEMO_CLASSES)
    if device.type == "cpu":  # the same cores as the full path's worker
        torch.set_num_threads(cfg.train.torch_threads or max(1, int(cfg.scaling.cpus_per_worker)))
    flops = count_train_flops(cfg, num_classes, device)
    peak = peak_flops or measure_peak_flops(device)
    # the baseline first, before Ray starts anything on this machine
    results = [plain_loop(cfg, num_classes, device, steps=steps, warmup=warmup)]
    if not skip_fovea:
        if not cfg.data.path:  # the demo set, sized so the measured epoch has `steps` steps
            data_dir = benchmark_dataset(cfg, samples=batch * steps, val_samples=val_samples)
            tree = cfg.model_dump(mode="json")
            set_path(tree, "data.path", str(data_dir))
            cfg = build_config([tree])
        with tempfile.TemporaryDirectory(prefix="fovea-benchmark-") as storage:
            results.append(fovea_path(cfg, epochs=epochs, storage=Path(storage)))
    for result in results:
        result.mfu = result.samples_per_s * flops / peak
    report: dict[str, Any] = {
        "model": cfg.model.name,
        "batch_size": batch,
        "input": list(input_shape(cfg)),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None,
        "precision": str(autocast_dtype(cfg.train.precision, device) or torch.float32).removeprefix("torch."),
        "compile": compile_enabled(cfg.train.compile, device),
        "compile_mode": cfg.train.compile_mode,
        "jpeg_decode": cfg.data.jpeg_decode,
        "train_gflops_per_sample": flops / 1e9,
        "peak_tflops": peak / 1e12,
        "torch": torch.__version__,
        "paths": [asdict(result) for result in results],
    }
    if len(results) == 2:
        report["ratio"] = results[1].samples_per_s / results[0].samples_per_s
    return report


def format_report(report: dict[str, Any]) -> str:
    """The printed table."""
    lines = [
        f"{report['model']} batch {report['batch_size']} input {tuple(report['input'])} on {report['device']} "
        f"({report['precision']}, compile {'on, ' + report['compile_mode'] if report['compile'] else 'off'}): "
        f"{report['train_gflops_per_sample']:.2f} GFLOP per training sample (FlopCounterMode), "
        f"peak {report['peak_tflops']:.1f} TFLOP/s (measured matmul)",
    ]
    for path in report["paths"]:
        lines.append(
            f"  {path['name']:<16} {format_rate(path['samples_per_s']):>10} samples/s | "
            f"MFU {100 * path['mfu']:5.1f}% | peak memory {path['peak_memory_mb']:8.0f} MiB | "
            f"{path['samples']} samples in {path['seconds']:.2f} s"
        )
    if "ratio" in report:
        lines.append(f"  ratio fovea / plain loop: {report['ratio']:.3f}")
    return "\n".join(lines)
