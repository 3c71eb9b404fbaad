"""Which video models learn the demo motions from scratch, and how fast: an in-memory check without Ray.

By default it renders the demo video set with the generator (no H.264 round trip) and samples 8 frames 4 apart
with the jobs' augmentation (short-side scale jitter + random crop, centre crop for validation) every epoch. With
``--data PREPARED`` the clips come from a prepared video dataset through the jobs' own ``DecodeClips`` instead:
``--views`` augmented clips per training video, decoded once and taken in turn. Either way it trains in memory
with AdamW and a one-cycle schedule, printing val top-1 and per-class hits as it goes. Used to choose the video
presets; the figures are in benchmarks/RESULTS.md.

    python benchmarks/video_ablation.py MODEL [--size 32] [--epochs 20] [--lr 3e-4] [--kw "patch_size=8"]
    python benchmarks/video_ablation.py MODEL --data $FOVEA_HOME/datasets/demo-videos-.../prepared [--views 4]

A model given as ``mvit:FIELDS`` is an MViT built from those ``MViTCfg`` fields; ``mvit_micro_8x4`` without
pooling, for example, is
``"mvit:depth=5,embed_dim=32,num_heads=1,stage_starts=(),kernel_qkv=(1,1,1),stride_kv=(1,1,1)"``.
"""

from __future__ import annotations

import argparse
import ast
import time
from collections.abc import Callable

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from fovea.data import ClipSpec, DecodeClips, load_manifest
from fovea.data.demo_video import DEMO_ACTIONS, render_demo_video
from fovea.models import create_model
from fovea.train.loop import Normalize


def keywords(text: str) -> dict:
    """``"a=1,b=(1,2)"`` as ``{"a": 1, "b": (1, 2)}``."""
    call = ast.parse(f"f({text})", mode="eval").body
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}


def render(per_class: int, split_id: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    videos, labels = [], []
    for label, action in enumerate(DEMO_ACTIONS):
        for index in range(per_class):
            rng = np.random.default_rng([0, split_id, label, index])
            videos.append(render_demo_video(action, rng, size=size, num_frames=32))
            labels.append(label)
    return torch.from_numpy(np.stack(videos)), torch.tensor(labels)


def clips(videos: torch.Tensor, args: argparse.Namespace, train: bool, gen: torch.Generator) -> torch.Tensor:
    """``(N, T, H, W, 3)`` uint8 videos to ``(N, 3, frames, size, size)`` uint8 clips."""
    span = (args.frames - 1) * args.interval + 1
    out = []
    for video in videos:
        last = video.shape[0] - span
        start = int(torch.randint(0, last + 1, (1,), generator=gen)) if train else last // 2
        clip = video[start : start + span : args.interval].permute(0, 3, 1, 2).float()  # (T, 3, H, W)
        scale = float(torch.empty(1).uniform_(*args.scale, generator=gen)) if train else args.scale[0]
        short = max(args.size, round(args.size * scale))
        clip = F.interpolate(clip, size=(short, short), mode="bilinear", antialias=True, align_corners=False)
        if train:
            top, left = (int(torch.randint(0, short - args.size + 1, (1,), generator=gen)) for _ in range(2))
        else:
            top = left = (short - args.size) // 2
        out.append(clip[..., top : top + args.size, left : left + args.size].transpose(0, 1))
    return torch.stack(out).round().clamp(0, 255).to(torch.uint8)


Clips = tuple[Callable[[int], torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, int]


def rendered_clips(args: argparse.Namespace) -> Clips:
    """Training clips drawn anew each epoch from rendered videos; val clips, labels and the number of classes."""
    train_videos, train_y = render(args.per_class[0], 0, args.source_size)
    val_videos, val_y = render(args.per_class[1], 1, args.source_size)
    gen = torch.Generator().manual_seed(0)
    val_x = clips(val_videos, args, False, gen)
    return (lambda epoch: clips(train_videos, args, True, gen)), train_y, val_x, val_y, len(DEMO_ACTIONS)


def decoded_clips(args: argparse.Namespace) -> Clips:
    """The same from a prepared dataset through ``DecodeClips``: ``--views`` training clips per video, in turn."""
    manifest = load_manifest(args.data)

    def rows(split: str) -> list[dict]:
        return pq.read_table(manifest["splits"][split]["shards"]).to_pylist()

    spec = ClipSpec(img_size=args.size, num_frames=args.frames, frame_interval=args.interval, scale=tuple(args.scale))
    train_rows, val_rows = rows("train"), rows("val")
    decode = DecodeClips(spec, train=True, seed=0)
    train_x = torch.from_numpy(
        np.stack([np.stack([decode.views(r, k)[0] for r in train_rows]) for k in range(args.views)])
    )
    val_x = torch.from_numpy(np.stack([DecodeClips(spec, train=False).views(row)[0] for row in val_rows]))
    labels = [torch.tensor([row["label"] for row in split]) for split in (train_rows, val_rows)]
    return (lambda epoch: train_x[epoch % args.views]), labels[0], val_x, labels[1], len(manifest["classes"])


def build(name: str, args: argparse.Namespace, num_classes: int) -> torch.nn.Module:
    if name.startswith("mvit:"):
        from fovea.models.mvit import MViT, MViTCfg

        cfg = MViTCfg(**keywords(name[5:]))
        return MViT(cfg=cfg, num_classes=num_classes, img_size=args.size, num_frames=args.frames)
    kwargs = keywords(args.kw)
    return create_model(name, num_classes=num_classes, img_size=args.size, num_frames=args.frames, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--size", type=int, default=32, help="crop side")
    parser.add_argument("--source-size", type=int, default=96, help="side of the rendered videos")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--interval", type=int, default=4)
    parser.add_argument("--scale", type=float, nargs=2, default=(1.14, 1.43))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--per-class", type=int, nargs=2, default=(100, 25), metavar=("TRAIN", "VAL"))
    parser.add_argument("--kw", default="", help='model keyword arguments, e.g. "patch_size=8,embed_dim=64"')
    parser.add_argument("--data", help="a prepared video dataset to decode clips from, instead of rendering")
    parser.add_argument("--views", type=int, default=4, help="with --data: augmented clips decoded per video")
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    train_clips, train_y, val_x, val_y, num_classes = (decoded_clips if args.data else rendered_clips)(args)
    source = f"decoded from {args.data}" if args.data else "rendered"
    print(f"{len(train_y)} train and {len(val_y)} val videos {source} in {time.perf_counter() - start:.1f} s")

    torch.manual_seed(0)
    model = build(args.model, args, num_classes)
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    normalize = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = len(train_y) // args.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps, pct_start=0.1
    )
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        train_x, order, total = train_clips(epoch), torch.randperm(len(train_y)), 0.0
        for step in range(steps):
            batch = order[step * args.batch_size : (step + 1) * args.batch_size]
            loss = F.cross_entropy(model(normalize(train_x[batch])), train_y[batch], label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            total += loss.item()
        if (epoch + 1) % max(1, args.epochs // 10) == 0 or epoch + 1 == args.epochs:
            model.eval()
            with torch.no_grad():
                pred = torch.cat([model(normalize(val_x[i : i + 100])).argmax(1) for i in range(0, len(val_y), 100)])
            hits = [int(((pred == val_y) & (val_y == c)).sum()) for c in range(num_classes)]
            print(
                f"epoch {epoch + 1}/{args.epochs} train loss {total / steps:.3f} "
                f"val top-1 {100 * (pred == val_y).float().mean():.1f}% hits per class {hits} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
