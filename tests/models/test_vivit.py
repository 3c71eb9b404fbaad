"""ViViT: the four models' shapes and frame-order dependence, the paper's sizes, and starting from 2D ViT weights."""

from __future__ import annotations

import pytest
import timm
import torch
from helpers import logits_in_frame_orders
from torch.utils.flop_counter import FlopCounterMode

from fovea.models import count_parameters, create_model, is_video_model
from fovea.models.layers import inflate_patch_weight, resize_pos_grid

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


def test_published_presets_follow_scenic_and_micro_presets_keep_their_form():
    with torch.device("meta"):
        fsa, fdp = (timm.create_model(f"vivit_b16x2_{kind}", num_classes=4) for kind in ("fsa", "fdp"))
        micro_fsa, micro_fdp = (timm.create_model(f"vivit_micro_{kind}", num_classes=4) for kind in ("fsa", "fdp"))
    assert fsa.blocks[0].time_first and fdp.blocks[0].attn.time_heads_first
    assert fsa.blocks[0].mlp.act.approximate == fdp.blocks[-1].mlp.act.approximate == "tanh"
    assert not micro_fsa.blocks[0].time_first and not micro_fdp.blocks[0].attn.time_heads_first
    assert micro_fsa.blocks[0].mlp.act.approximate == "none"
    with pytest.raises(ValueError, match="attention_order must be one of"):
        create_model("vivit_micro_fsa", num_classes=3, attention_order="space_then_time")


@pytest.mark.parametrize("time_heads_first", [True, False])
def test_factorised_dot_product_heads_attend_where_told(time_heads_first):
    from fovea.models.vivit import FactorisedDotProductAttention

    torch.manual_seed(0)
    attention = FactorisedDotProductAttention(8, 2, time_heads_first=time_heads_first).eval()
    with torch.no_grad():
        attention.proj.weight[:, 4:] = 0  # keep only the first head's output
        tokens = torch.randn(1, 3, 4, 8)  # (B, T', N, D)
        base = attention(tokens)
        same_place, same_step = tokens.clone(), tokens.clone()
        same_place[0, 2, 0] += 1.0  # another time step, the same spatial position as token (0, 0)
        same_step[0, 0, 3] += 1.0  # the same time step, another position
        moved_by_place = (attention(same_place)[0, 0, 0] - base[0, 0, 0]).abs().max()
        moved_by_step = (attention(same_step)[0, 0, 0] - base[0, 0, 0]).abs().max()
    # scenic gives the first half of the heads to time: they see only the same position at other time steps
    assert (moved_by_place > 1e-4) == time_heads_first and (moved_by_step > 1e-4) != time_heads_first


@pytest.mark.parametrize("order", ["time_space", "space_time"])
def test_factorised_self_attention_runs_in_the_given_order(order):
    torch.manual_seed(0)
    model = create_model("vivit_micro_fsa", num_classes=3, attention_order=order).eval()
    block, tokens = model.blocks[0], torch.randn(1, 8, 64, 96)

    def over_time(x):
        across = x.transpose(1, 2)
        return (across + block.attn_temporal(block.norm_temporal(across))).transpose(1, 2)

    def over_space(x):
        return x + block.attn(block.norm1(x))

    with torch.no_grad():
        mixed = over_space(over_time(tokens)) if order == "time_space" else over_time(over_space(tokens))
        torch.testing.assert_close(block(tokens), mixed + block.mlp(block.norm2(mixed)))


def test_own_video_weights_fit_another_clip_length_and_size(tmp_path):
    """fovea's 16-frame, 32 px micro weights (8 x 8 x 8 tokens) into 8 frames (4 steps) or 16 px (4 x 4)."""
    torch.manual_seed(0)
    source = create_model("vivit_micro_joint", num_classes=3)
    path = tmp_path / "joint.pth"
    torch.save(source.state_dict(), path)
    shorter = create_model("vivit_micro_joint", num_classes=3, num_frames=8, checkpoint=path)
    table = source.pos_embed[:, 1:].reshape(8, 64, 96)
    resized = shorter.pos_embed[:, 1:].reshape(4, 64, 96)
    # linear over time, half-pixel centres: each new step is the mean of two old ones
    torch.testing.assert_close(resized[0], (table[0] + table[1]) / 2)
    assert torch.equal(shorter.pos_embed[:, 0], source.pos_embed[:, 0])
    smaller = create_model("vivit_micro_joint", num_classes=3, img_size=16, checkpoint=path)
    assert smaller.pos_embed.shape == (1, 1 + 8 * 16, 96) and smaller(torch.randn(1, 3, 16, 16, 16)).shape == (1, 3)
    torch.testing.assert_close(smaller.pos_embed[:, 1:17], resize_pos_grid(table[None, 0], (4, 4)))  # bicubic
    fe = create_model("vivit_micro_fe", num_classes=3)
    torch.save(fe.state_dict(), path)
    both = create_model("vivit_micro_fe", num_classes=3, num_frames=8, img_size=16, checkpoint=path)
    assert both.pos_embed.shape == (1, 1 + 16, 96) and both.temporal_pos_embed.shape == (1, 1 + 4, 96)
