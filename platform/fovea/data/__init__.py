"""Ray Data building blocks: dataset preparation, manifests, the built-in demo data and the streaming datasets."""

from fovea.data.clips import ClipSpec, DecodeClips
from fovea.data.demo import ensure_demo_images, make_demo_images
from fovea.data.demo_video import ensure_demo_videos, make_demo_videos
from fovea.data.manifest import (
    dataset_location,
    is_uri,
    load_manifest,
    location_label,
    manifest_hash,
    write_manifest,
)
from fovea.data.prepare import prepare_images
from fovea.data.prepare_video import prepare_videos
from fovea.data.scan import scan_source
from fovea.data.stream import build_image_datasets, build_video_datasets, read_split
from fovea.data.transforms import DecodeImages, build_image_transform

__all__ = [
    "ClipSpec",
    "DecodeClips",
    "DecodeImages",
    "build_image_datasets",
    "build_image_transform",
    "build_video_datasets",
    "dataset_location",
    "ensure_demo_images",
    "ensure_demo_videos",
    "is_uri",
    "load_manifest",
    "location_label",
    "manifest_hash",
    "make_demo_images",
    "make_demo_videos",
    "prepare_images",
    "prepare_videos",
    "read_split",
    "scan_source",
    "write_manifest",
]
