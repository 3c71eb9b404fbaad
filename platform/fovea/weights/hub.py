"""Where ``model.pretrained=true`` fetches each fovea preset's published weights, and the fetch itself.

timm's own presets carry their hub locations in their pretrained configs; fovea's video and CvT presets are
published by other projects in those projects' layouts, so they are fetched here (into the Hugging Face or torch hub
cache, as timm does) and loaded through ``load_weights``, which converts them. timm would warn and go on with random
weights for a preset without a location: fovea refuses instead.
"""

from __future__ import annotations

from pathlib import Path

# transformers model ids on the Hugging Face hub (each a config.json beside the weights), checked 2026-12:
# Microsoft's CvT ports (ImageNet-1k; -22k: pre-trained on ImageNet-22k), Facebook's TimeSformer and Google's ViViT
# (Model 1) Kinetics-400 fine-tunings
HUB_IDS = {
    "cvt_13_224": "microsoft/cvt-13",
    "cvt_21_224": "microsoft/cvt-21",
    "cvt_13_384": "microsoft/cvt-13-384",
    "cvt_21_384": "microsoft/cvt-21-384",
    "cvt_w24_384": "microsoft/cvt-w24-384-22k",
    "timesformer_base_8x224_divided": "facebook/timesformer-base-finetuned-k400",
    "timesformer_hr_16x448": "facebook/timesformer-hr-finetuned-k400",
    "vivit_b16x2_joint": "google/vivit-b-16x2-kinetics400",
}


def _torchvision_url(name: str) -> str | None:
    if name != "mvit_base_16x4":
        return None
    from torchvision.models.video import MViT_V1_B_Weights  # the URL as torchvision publishes it, not a copy

    return MViT_V1_B_Weights.KINETICS400_V1.url


def published_source(name: str) -> str | None:
    """``hf:ORG/NAME`` or a URL for a fovea preset with published weights, else None."""
    if name in HUB_IDS:
        return f"hf:{HUB_IDS[name]}"
    return _torchvision_url(name)


def is_fovea_preset(name: str) -> bool:
    """Whether ``name`` is one of fovea's registered models (rather than timm's)."""
    import timm

    return timm.models.model_entrypoint(name).__module__.startswith("fovea.models.")


def check_published(name: str) -> None:
    """Raise the one-line ``ValueError`` of ``fetch_published`` for a fovea preset with no published weights, before
    anything is downloaded (timm's presets are timm's to check)."""
    if is_fovea_preset(name) and published_source(name) is None:
        raise ValueError(
            f"model.pretrained: no published weights are known for {name}; download them and pass "
            "model.checkpoint=FILE (see `fovea weights inspect FILE` for the layouts fovea reads)"
        )


def fetch_published(name: str) -> Path:
    """Download (or find in the hub cache) the published weights of preset ``name``.

    Raises:
        ValueError: the preset has no published weights fovea knows of.
        RuntimeError: the download failed (no network, say): one line with what to do instead.
    """
    check_published(name)
    source = published_source(name)
    assert source is not None  # check_published raised otherwise
    try:
        if source.startswith("hf:"):
            from huggingface_hub import snapshot_download

            patterns = ["config.json", "preprocessor_config.json", "*.safetensors", "*.safetensors.index.json"]
            folder = Path(snapshot_download(source.removeprefix("hf:"), allow_patterns=patterns))
            if not any(folder.glob("*.safetensors")):  # older repos hold only pytorch_model.bin
                folder = Path(snapshot_download(source.removeprefix("hf:"), allow_patterns=[*patterns, "*.bin"]))
            return folder
        import torch

        target = Path(torch.hub.get_dir()) / "checkpoints" / source.rsplit("/", 1)[-1]
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(source, str(target), progress=False)
        return target
    except Exception as err:  # noqa: BLE001 - offline, proxy, 404: the same advice applies
        from fovea.errors import typed_line

        raise RuntimeError(
            f"could not fetch published weights for {name} from {source} ({typed_line(err, limit=160)}); "
            "without hub access, download them elsewhere and pass model.checkpoint=FILE"
        ) from None
