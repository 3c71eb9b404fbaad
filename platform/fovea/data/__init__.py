"""Ray Data building blocks: dataset preparation, manifests, the built-in demo data and the streaming datasets.

The names below load on first use (PEP 562), so that importing one building block (``fovea.data.check`` in a
preparation task, say) does not import torch and every other one with it.
"""

from __future__ import annotations

from fovea.lazy import lazy_exports

_HOMES = {
    "ClipSpec": "clips",
    "DecodeClips": "clips",
    "DecodeImages": "transforms",
    "build_image_datasets": "stream",
    "build_image_transform": "transforms",
    "build_video_datasets": "stream",
    "dataset_location": "manifest",
    "ensure_demo_images": "demo",
    "ensure_demo_videos": "demo_video",
    "is_uri": "manifest",
    "load_manifest": "manifest",
    "location_label": "manifest",
    "manifest_hash": "manifest",
    "make_demo_images": "demo",
    "make_demo_videos": "demo_video",
    "prepare_images": "prepare",
    "prepare_videos": "prepare_video",
    "read_split": "stream",
    "scan_source": "scan",
    "write_manifest": "manifest",
}

__all__ = sorted(_HOMES)


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
