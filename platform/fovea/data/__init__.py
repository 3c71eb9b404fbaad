"""Ray Data building blocks: dataset preparation, manifests, the built-in demo data and the streaming datasets."""

from fovea.data.demo import ensure_demo_images, make_demo_images
from fovea.data.manifest import load_manifest, write_manifest
from fovea.data.prepare import prepare_images, scan_source
from fovea.data.stream import build_image_datasets, read_split
from fovea.data.transforms import DecodeImages, build_image_transform

__all__ = [
    "DecodeImages",
    "build_image_datasets",
    "build_image_transform",
    "ensure_demo_images",
    "load_manifest",
    "make_demo_images",
    "prepare_images",
    "read_split",
    "scan_source",
    "write_manifest",
]
