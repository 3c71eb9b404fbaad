"""How fast a video model learns the demo video set, without Ray: a quick check for choosing presets.

Decodes K differently augmented training clips per video once (the same DecodeClips as the Ray path), then trains
in memory with AdamW and a one-cycle schedule, reporting centre-view val top-1 as it goes.

    python benchmarks/video_learnability.py DATA MODEL [--size 64] [--epochs 40] [--lr 1e-3] [--views 4]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow.parquet as pq
import torch

from fovea.data import ClipSpec, DecodeClips, load_manifest
from fovea.models import create_model
from fovea.train.loop import Normalize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a prepared video dataset (e.g. $FOVEA_HOME/datasets/demo-videos-.../prepared)")
    parser.add_argument("model")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--interval", type=int, default=4)
    parser.add_argument("--scale", type=float, nargs=2, default=(1.14, 1.43))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--views", type=int, default=4, help="augmented clips decoded per training video")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(2)
    manifest = load_manifest(args.data)

    def rows(split: str) -> list[dict]:
        return pq.read_table(manifest["splits"][split]["shards"]).to_pylist()

    spec = ClipSpec(img_size=args.size, num_frames=args.frames, frame_interval=args.interval, scale=tuple(args.scale))
    start = time.perf_counter()
    train_rows, val_rows = rows("train"), rows("val")
    decode = DecodeClips(spec, train=True, seed=0)
    train_x = torch.from_numpy(
        np.stack([np.stack([decode.views(r, k)[0] for r in train_rows]) for k in range(args.views)])
    )
    train_y = torch.tensor([row["label"] for row in train_rows])
    val_x = torch.from_numpy(np.stack([DecodeClips(spec, train=False).views(row)[0] for row in val_rows]))
    val_y = torch.tensor([row["label"] for row in val_rows])
    print(
        f"decoded {args.views}x{len(train_rows)} train and {len(val_rows)} val clips "
        f"in {time.perf_counter() - start:.1f} s"
    )

    torch.manual_seed(0)
    model = create_model(args.model, num_classes=len(manifest["classes"]), img_size=args.size, num_frames=args.frames)
    normalize = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps_per_epoch = len(train_rows) // args.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.1
    )
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order, clips = torch.randperm(len(train_rows)), train_x[epoch % args.views]
        for step in range(steps_per_epoch):
            batch = order[step * args.batch_size : (step + 1) * args.batch_size]
            logits = model(normalize(clips[batch]))
            loss = torch.nn.functional.cross_entropy(logits, train_y[batch], label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
        if (epoch + 1) % max(1, args.epochs // 8) == 0 or epoch + 1 == args.epochs:
            model.eval()
            with torch.no_grad():
                hits = sum(
                    (model(normalize(val_x[i : i + 100])).argmax(1) == val_y[i : i + 100]).sum().item()
                    for i in range(0, len(val_y), 100)
                )
            elapsed = time.perf_counter() - start
            print(
                f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.3f} "
                f"val top-1 {100 * hits / len(val_y):.1f}% ({elapsed:.0f} s)"
            )


if __name__ == "__main__":
    main()
