"""The training device and the wrappers around a model: device defaults, autocast, compile, DDP unwrapping, peak
memory, and getting a dataset shard's batches onto the device. Plain torch (a shard is anything with Ray Data's
``iter_batches``/``iter_torch_batches``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under torch.compile and DDP wrappers (what state dicts and EMA should see)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def compile_enabled(setting: bool | str, device: torch.device) -> bool:
    """``train.compile``: ``auto`` compiles on a GPU only (on a CPU compiling takes longer than it saves)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def configure_device(device: torch.device) -> None:
    """Fast GPU defaults: TF32 for the float32 matmuls and convolutions left outside bf16 autocast."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process so far: allocated GPU memory on CUDA, else the process's peak RSS (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 under ``auto`` on GPU, nothing on CPU (bf16 matmuls are slower than fp32 on most CPUs)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer can skip a step on the device (fused Adam/AdamW read ``optimizer.found_inf``).

    Then a step with a non-finite loss or gradient is dropped without the host waiting for the GPU: the training
    loop never synchronises, and the next batches are queued while this one computes.
    """
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False) and optimizer.defaults.get("fused"))


def sum_across_workers(values: list[float], device: torch.device) -> list[float]:
    """``values`` summed over every DDP process (as they are when there is no process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def prefetch_to_device(
    batches: Iterable[dict[str, torch.Tensor]], device: torch.device
) -> Iterator[dict[str, torch.Tensor]]:
    """Copy each batch to a CUDA device one batch ahead, on a side stream, so the GPU never waits for a copy.

    The batches should come from pinned host memory (``iter_torch_batches(pin_memory=True)``) for the copies to
    be asynchronous. On any other device the batches pass through as they are.
    """
    if device.type != "cuda":
        yield from batches
        return
    stream = torch.cuda.Stream(device)

    def copy(batch: dict[str, Any]) -> dict[str, Any]:
        with torch.cuda.stream(stream):
            return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    iterator = iter(batches)
    ahead = next(iterator, None)
    ahead = copy(ahead) if ahead is not None else None
    while ahead is not None:
        torch.cuda.current_stream(device).wait_stream(stream)
        current = ahead
        for value in current.values():
            if torch.is_tensor(value):
                value.record_stream(torch.cuda.current_stream(device))  # the side stream may not reuse it early
        following = next(iterator, None)
        ahead = copy(following) if following is not None else None
        yield current


class RowCount:
    """Rows a pass over a shard delivered (before the last, partial batch is dropped)."""

    def __init__(self) -> None:
        self.rows = 0


def full_batches(batches: Iterable[dict[str, Any]], batch_size: int, count: RowCount) -> Iterator[dict[str, Any]]:
    """The full batches of ``batches`` (only the last can be short), every row counted in ``count``."""
    for batch in batches:
        rows = len(batch["label"])
        count.rows += rows
        if rows == batch_size:
            yield batch


def shard_batches(
    shard: Any,
    *,
    batch_size: int,
    device: torch.device,
    prefetch_batches: int,
    jpeg_decode: str = "cpu",
    img_size: int = 224,
    count: RowCount | None = None,
    video_decode: dict[str, int] | None = None,
    **options: Any,
) -> Iterator[dict[str, torch.Tensor]]:
    """A dataset shard's batches on ``device``: uint8 tensors copied a batch ahead from pinned memory, or
    (``jpeg_decode="device"``) JPEG batches decoded on the device, or (``video_decode``: ``num_frames`` and
    ``decode_threads``; ``data.video_decode=device``) clips decoded on the device. With ``count`` every row is
    counted there and the last, partial batch dropped (``drop_last``, done here so that the count sees it)."""
    if jpeg_decode == "device" or video_decode is not None:
        from fovea.data.device_decode import decode_batch, decode_clip_batch

        raw = shard.iter_batches(
            batch_size=batch_size, batch_format="numpy", prefetch_batches=prefetch_batches, **options
        )
        raw = raw if count is None else full_batches(raw, batch_size, count)
        if video_decode is not None:
            return (decode_clip_batch(b, img_size=img_size, device=device, **video_decode) for b in raw)
        return (decode_batch(batch, img_size=img_size, device=device) for batch in raw)
    batches = shard.iter_torch_batches(
        batch_size=batch_size,
        prefetch_batches=prefetch_batches,
        device="cpu",
        pin_memory=device.type == "cuda",  # pinned host batches: the copies to the GPU run asynchronously
        **options,
    )
    return prefetch_to_device(batches if count is None else full_batches(batches, batch_size, count), device)
