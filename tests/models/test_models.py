"""Models: the registry front door, tiny presets, Swin window sizes, and loading local weights."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models import model_entrypoint

from fovea.models import (
    check_model_name,
    count_parameters,
    create_model,
    is_video_model,
    list_models,
    load_weights,
)

# Every micro and nano model fovea registers, image and video: read from the registry, so a new one is tested too.
SMALL = sorted(
    {
        name
        for name in list_models("*_micro*") + list_models("*_nano*")
        if model_entrypoint(name).__module__.startswith("fovea.models.")
    }
)


def test_the_small_models_are_read_from_the_registry():
    assert {"vit_nano_patch4_16", "cvt_micro_32", "c3d_micro", "mvit_micro_8x4", "vivit_micro_fe"} <= set(SMALL)
    assert any(is_video_model(name) for name in SMALL) and not all(is_video_model(name) for name in SMALL)


@pytest.mark.parametrize("name", SMALL)
def test_tiny_presets_are_in_timms_registry_and_run(name):
    model = timm.create_model(name, num_classes=5)  # registered in timm itself once fovea.models is imported
    size = model.pretrained_cfg["input_size"][-1]
    # a video model takes clips (B, C, T, H, W) of the length it was built for
    frames = (model.num_frames,) if is_video_model(name) else ()
    out = model(torch.randn(2, 3, *frames, size, size))
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_vit_deit_swin_from_timm_at_other_sizes():
    vit = create_model("vit_tiny_patch16_224", num_classes=3, img_size=64)
    assert vit(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    deit = create_model("deit_tiny_distilled_patch16_224", num_classes=3, img_size=48)
    deit.train()
    assert deit(torch.randn(2, 3, 48, 48)).shape == (2, 3)  # the two heads averaged unless distilled training
    swin = create_model("swin_micro_patch2_window4_32", num_classes=3, img_size=64, window_size=8)
    assert swin(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    assert swin.layers[0].blocks[0].window_size == (8, 8)


def test_unknown_model_and_bad_argument_are_clear():
    with pytest.raises(ValueError, match="did you mean vit_micro_patch4_32"):
        check_model_name("vit_mikro_patch4_32")
    with pytest.raises(ValueError, match="vit_micro_patch4_32"):
        create_model("vit_micro_patch4_32", num_classes=2, no_such_argument=1)


def test_checkpoint_loads_with_new_head_and_resized_position_embedding(tmp_path):
    source = create_model("vit_micro_patch4_32", num_classes=10)
    path = tmp_path / "weights.pth"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    target = create_model("vit_micro_patch4_32", num_classes=4, img_size=48, checkpoint=path)
    assert target.pos_embed.shape[1] == 1 + (48 // 4) ** 2
    torch.testing.assert_close(target.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert target.head.weight.shape == (4, 128)  # fresh head for the new classes


def test_checkpoint_with_same_classes_keeps_head(tmp_path):
    source = create_model("swin_micro_patch2_window4_32", num_classes=6)
    path = tmp_path / "swin.pt"
    torch.save(source.state_dict(), path)
    target = create_model("swin_micro_patch2_window4_32", num_classes=6)
    report = load_weights(target, path)
    assert report.reset_head == []
    x = torch.randn(2, 3, 32, 32)
    source.eval(), target.eval()
    torch.testing.assert_close(target(x), source(x))


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "swin.pt"
    torch.save(create_model("swin_micro_patch2_window4_32", num_classes=2).state_dict(), path)
    with pytest.raises(ValueError, match="shapes do not fit|missing weights"):
        create_model("vit_micro_patch4_32", num_classes=2, checkpoint=path)


def test_missing_checkpoint_and_offline_pretrained_fail_clearly(monkeypatch):
    with pytest.raises(FileNotFoundError, match="model.checkpoint"):
        create_model("vit_micro_patch4_32", num_classes=2, checkpoint="/no/such/file.pth")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: patch the constant
    with pytest.raises(RuntimeError, match="model.checkpoint=FILE"):
        create_model("vit_tiny_patch16_224", num_classes=2, pretrained=True)


def test_parameter_count():
    assert count_parameters(create_model("vit_micro_patch4_32", num_classes=8)) == 677_512
