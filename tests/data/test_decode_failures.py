"""Rows that fail to decode while training: named where they fail, counted once per batch, and told in the epoch's
warning as what happened (the first file named), not blamed on a shard."""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image

from fovea.data import decode_failures
from fovea.data.decode_failures import DecodeFailures, FlushEachBatch, flush_batch, skip_row
from fovea.data.transforms import DecodeImages
from fovea.train.plan import WorkerPlan
from fovea.train.worker import missing_rows_warning


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 20), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_skipped_rows_are_named_and_flushed_once_per_batch(caplog):
    batch = {"path": np.asarray(["/data/a.mp4", "/data/b.mp4", "/data/c.mp4"], dtype=object)}
    decode_failures.begin_batch()  # as each batch does: what earlier decodes in this process noted is not this one's
    with caplog.at_level(logging.WARNING, logger="fovea.data.decode_failures"):
        skip_row("video", batch, 1, ValueError("damaged: frame 3 of 9 does not decode"))
        skip_row("video", batch, 2, KeyError("num_frames"))
    assert "skipping video /data/b.mp4: it does not decode (damaged: frame 3 of 9 does not decode)" in caplog.text
    assert "KeyError: 'num_frames'" in caplog.text  # an unexpected error keeps its type
    flushed = flush_batch()
    assert (flushed.rows, flushed.first_path) == (2, "/data/b.mp4")
    assert (
        flushed.describe() == "2 rows failed to decode (the first: /data/b.mp4: damaged: frame 3 of 9 does not decode)"
    )
    assert flush_batch() is None  # nothing noted since


def test_image_rows_that_do_not_decode_are_counted_with_their_path(caplog, monkeypatch):
    batch = {
        "image": np.asarray([_png((200, 0, 0)), b"not an image", _png((0, 0, 200))], dtype=object),
        "label": np.asarray([0, 1, 2]),
        "path": np.asarray(["/img/red.png", "/img/broken.jpg", "/img/blue.png"], dtype=object),
    }
    sent = []
    original = decode_failures.flush_batch

    def spy():
        sent.append(original())

    decode = FlushEachBatch(DecodeImages(16, train=False))
    skip_row("image", {"path": ["/left/over.png"]}, 0, OSError("left over"))  # a batch decoded without a flush
    monkeypatch.setattr(decode_failures, "flush_batch", spy)
    with caplog.at_level(logging.WARNING, logger="fovea.data.decode_failures"):
        out = decode(batch)
    assert out["image"].shape == (2, 3, 16, 16) and out["label"].tolist() == [0, 2]
    assert "skipping image /img/broken.jpg" in caplog.text
    assert [(failures.rows, failures.first_path) for failures in sent] == [(1, "/img/broken.jpg")]


def test_the_epoch_warning_says_what_happened():
    plan = WorkerPlan(config={}, classes=("a", "b"), train_count=100, val_count=20, run_name="r")
    missing = {"train": 3, "val": 1}
    unknown = missing_rows_warning(2, missing, plan)
    assert unknown == (
        "warning: epoch 2 went without 3 of 100 train rows, 1 of 20 val rows: a shard file failed to read (Ray "
        "Data's error above names it; skipped within data.max_bad_shards) or rows no longer decode"
    )
    decoded = DecodeFailures(4, "/data/x.mp4", "damaged: frame 0 of 9 does not decode")
    assert missing_rows_warning(2, missing, plan, decoded) == (
        "warning: epoch 2 went without 3 of 100 train rows, 1 of 20 val rows: 4 rows failed to decode (the first: "
        "/data/x.mp4: damaged: frame 0 of 9 does not decode)"
    )
    some = missing_rows_warning(2, missing, plan, DecodeFailures(1, "/data/x.mp4", "frames do not decode"))
    assert some.endswith(
        "1 row failed to decode (the first: /data/x.mp4: frames do not decode); the other 3: a shard file failed to "
        "read (Ray Data's error above names it; skipped within data.max_bad_shards)"
    )
    assert missing_rows_warning(2, missing, plan, DecodeFailures()).endswith(
        ": a shard file failed to read (Ray Data's error above names it; skipped within data.max_bad_shards)"
    )


def test_video_rows_torchcodec_cannot_decode_are_counted_with_their_path(caplog, monkeypatch):
    from fovea.data import clips
    from fovea.data.clips import ClipSpec, DecodeClips

    batch = {
        "video": np.asarray([b"not a video" * 10], dtype=object),
        "path": np.asarray(["/clips/broken.mp4"], dtype=object),
        "label": np.asarray([3]),
        "num_frames": np.asarray([8]),
        "backend": np.asarray(["torchcodec"], dtype=object),  # only TorchCodec read it when it was prepared
    }
    decode = DecodeClips(ClipSpec(img_size=8, num_frames=2), train=True, backend="decord")
    sent = []
    monkeypatch.setattr(clips, "flush_batch", lambda: sent.append(flush_batch()))
    with caplog.at_level(logging.WARNING, logger="fovea.data.decode_failures"):
        out = decode(batch)
    assert out["video"].shape == (0, 3, 2, 8, 8) and out["label"].tolist() == []
    assert "skipping video /clips/broken.mp4: it does not decode (not a readable video (" in caplog.text
    assert [(failures.rows, failures.first_path) for failures in sent] == [(1, "/clips/broken.mp4")]
    assert sent[0].first_reason.startswith("not a readable video (Failed to open input buffer: ")  # TorchCodec's
