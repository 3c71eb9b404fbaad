"""ViViT: the four models' shapes and frame-order dependence, the paper's sizes, and starting from 2D ViT weights."""

from __future__ import annotations

import pytest
import timm
import torch
from helpers import logits_in_frame_orders
from torch.utils.flop_counter import FlopCounterMode

from fovea.models import count_parameters, create_model, is_video_model
from fovea.models.layers import inflate_patch_weight

KINDS = ("joint", "fe", "fsa", "fdp")

# Arnab et al. 2021, Table 3 (ViViT-B/16x2, 32 frames at 224 px; "FLOPs" are multiply-adds, as in ViT): Model 1
# 88.9M parameters; 455, 284, 372 and 277 GFLOPs for Models 1-4. Model 2 has 115.1M parameters in Table 3.
PAPER_MACS = {"joint": 455e9, "fe": 284e9, "fsa": 372e9, "fdp": 277e9}


@pytest.mark.parametrize("name", [f"vivit_micro_{kind}" for kind in KINDS] + ["vivit_micro_convstem_fe"])
def test_micro_models_take_clips_and_care_about_frame_order(name):
    assert is_video_model(name)
    reverse, tubelets_swapped = list(range(7, -1, -1)), [2, 3, 0, 1, 6, 7, 4, 5]
    logits, reversed_order, shuffled = logits_in_frame_orders(name, 8, reverse, tubelets_swapped)
    assert logits.shape == (2, 5)
    # at initialisation the temporal signal is small (position embeddings of std 0.02), but it must be there
    assert (logits - reversed_order).abs().max() > 1e-5
    assert (logits - shuffled).abs().max() > 1e-5


def test_clip_shape_is_checked():
    model = create_model("vivit_micro_joint", num_classes=3)
    with pytest.raises(ValueError, match=r"expected clips \(B, C, T, H, W\) with T, H, W = \(16, 32, 32\)"):
        model(torch.randn(1, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="num_heads must be even"):
        create_model("vivit_micro_fdp", num_classes=3, num_heads=3, embed_dim=96)


@pytest.mark.parametrize("kind", KINDS)
def test_parameters_and_macs_match_the_paper(kind):
    with torch.device("meta"):  # shapes and FLOPs only; SDPA runs as countable matmuls on the meta device
        model = timm.create_model(f"vivit_b16x2_{kind}", num_classes=400).eval()
    if kind in ("joint", "fdp"):
        assert count_parameters(model) == pytest.approx(88.9e6, rel=0.015)
    if kind == "fe":
        assert count_parameters(model) == pytest.approx(115.1e6, rel=0.015)
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.randn(1, 3, 32, 224, 224, device="meta"))
    assert counter.get_total_flops() / 2 == pytest.approx(PAPER_MACS[kind], rel=0.05)


@pytest.mark.parametrize("kind", KINDS)
def test_every_model_starts_from_image_weights(vit_file, kind):
    vit, path = vit_file
    model = create_model(f"vivit_micro_{kind}", num_classes=4, checkpoint=path)
    inflated = model.patch_embed.proj.weight  # (D, C, 2, 4, 4): the image kernel on the second frame only
    assert torch.equal(inflated, inflate_patch_weight(vit.patch_embed.proj.weight, 2))
    assert torch.equal(inflated[:, :, 0], torch.zeros_like(inflated[:, :, 0]))
    assert torch.equal(model.blocks[1].mlp.fc2.weight, vit.blocks[1].mlp.fc2.weight)
    spatial = vit.pos_embed[:, 1:]  # (1, 64, D); the ViT's first entry is its CLS position
    if kind == "joint":
        assert torch.equal(model.pos_embed[:, 1:65], spatial) and torch.equal(model.pos_embed[:, -64:], spatial)
    elif kind == "fsa":
        assert torch.equal(model.blocks[0].attn_temporal.proj.weight, torch.zeros(96, 96))
    elif kind == "fdp":
        assert torch.equal(model.pos_embed.view(8, 64, 96)[3], spatial[0])


def test_factorised_encoder_sees_each_frame_as_the_image_model_does(vit_file):
    vit, path = vit_file
    model = create_model("vivit_micro_fe", num_classes=4, checkpoint=path).eval()
    clips = torch.randn(1, 3, 16, 32, 32)
    with torch.no_grad():
        tokens = model.patch_embed(clips)  # (1, 8, 64, D)
        tokens = torch.cat([model.cls_token.expand(1, 8, 1, 96), tokens], dim=2) + model.pos_embed
        for block in model.blocks:
            tokens = block(tokens)
        per_step = model.norm(tokens)[0, :, 0]  # (8, D): each time step's CLS
        # central-frame tubelets embed frames 1, 3, 5, ...: the spatial encoder is the ViT on those frames
        images = vit.forward_features(clips[0, :, 1::2].transpose(0, 1))[:, 0]  # (8, D)
    assert torch.allclose(per_step, images, atol=1e-5)


def test_conv_stem_keeps_the_token_grid_and_skips_image_patch_weights(vit_file):
    plain = create_model("vivit_micro_fe", num_classes=4, num_frames=8, patch_size=8, tubelet_size=1)
    stem = create_model("vivit_micro_convstem_fe", num_classes=4)
    assert stem.patch_embed.grid == plain.patch_embed.grid == (8, 4, 4)
    assert [m.stride for m in stem.patch_embed.stem if isinstance(m, torch.nn.Conv3d)] == [(1, 2, 2)] * 3
    two_layer = create_model(
        "vivit_micro_convstem_fe", num_classes=4, patch_size=4, stem_widths=(8, 16), tubelet_size=2
    )
    assert [m.stride for m in two_layer.patch_embed.stem if isinstance(m, torch.nn.Conv3d)] == [(1, 2, 2), (2, 2, 2)]
    assert two_layer(torch.randn(1, 3, 8, 32, 32)).shape == (1, 4)
    with pytest.raises(ValueError, match="gives patch size 8, not 4"):
        create_model("vivit_micro_convstem_fe", num_classes=4, patch_size=4)
    # 2D ViT weights: everything but the patch projection loads; the stem keeps its own initialisation
    vit, path = vit_file
    loaded = create_model("vivit_micro_convstem_fe", num_classes=4, checkpoint=path)
    torch.testing.assert_close(loaded.blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)
    assert loaded.patch_embed.proj.weight.shape == (96, 64, 1, 1, 1)  # the stem's 1x1x1 projection
