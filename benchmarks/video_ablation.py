"""Which video models learn the demo motions from scratch, and how fast: an in-memory check without Ray or a codec.

Renders the demo video set with the generator (no H.264 round trip), samples 8 frames 4 apart with the jobs'
augmentation (short-side scale jitter + random crop, centre crop for validation), and trains in memory with
AdamW and a one-cycle schedule, printing val top-1 and per-class hits as it goes. Used to choose the video
presets; the figures are in benchmarks/RESULTS.md.

    python benchmarks/video_ablation.py MODEL [--size 32] [--epochs 20] [--lr 3e-4] [--kw "patch_size=8"]

A model given as ``mvit:FIELDS`` is an MViT built from those ``MViTCfg`` fields; ``mvit_micro_8x4`` without
pooling, for example, is
``"mvit:depth=5,embed_dim=32,num_heads=1,stage_starts=(),kernel_qkv=(1,1,1),stride_kv=(1,1,1)"``.
"""

from __future__ import annotations

import argparse
import ast
import time

import numpy as np
import torch
import torch.nn.functional as F

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


def build(name: str, args: argparse.Namespace) -> torch.nn.Module:
    if name.startswith("mvit:"):
        from fovea.models.mvit import MViT, MViTCfg

        return MViT(cfg=MViTCfg(**keywords(name[5:])), num_classes=8, img_size=args.size, num_frames=args.frames)
    return create_model(name, num_classes=8, img_size=args.size, num_frames=args.frames, **keywords(args.kw))


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
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    train_videos, train_y = render(args.per_class[0], 0, args.source_size)
    val_videos, val_y = render(args.per_class[1], 1, args.source_size)
    gen = torch.Generator().manual_seed(0)
    val_x = clips(val_videos, args, False, gen)
    print(f"rendered {len(train_y)} train and {len(val_y)} val videos in {time.perf_counter() - start:.1f} s")

    torch.manual_seed(0)
    model = build(args.model, args)
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
        train_x, order, total = clips(train_videos, args, True, gen), torch.randperm(len(train_y)), 0.0
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
            hits = [int(((pred == val_y) & (val_y == c)).sum()) for c in range(len(DEMO_ACTIONS))]
            print(
                f"epoch {epoch + 1}/{args.epochs} train loss {total / steps:.3f} "
                f"val top-1 {100 * (pred == val_y).float().mean():.1f}% hits per class {hits} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
