"""Ray Data building blocks: dataset preparation, manifests and the built-in demo data."""

from fovea.data.demo import ensure_demo_images, make_demo_images
from fovea.data.manifest import load_manifest, write_manifest
from fovea.data.prepare import prepare_images, scan_source

__all__ = [
    "ensure_demo_images",
    "load_manifest",
    "make_demo_images",
    "prepare_images",
    "scan_source",
    "write_manifest",
]
