"""TimeSformer: the three attention schemes' shapes and frame-order dependence, the paper's sizes, image weights."""

from __future__ import annotations

import pytest
import timm
import torch
from helpers import logits_in_frame_orders
from torch.utils.flop_counter import FlopCounterMode

from fovea.models import count_parameters, create_model, is_video_model

SCHEMES = ("divided", "joint", "space")


@pytest.mark.parametrize(
    "name", [f"timesformer_micro_{attention}" for attention in SCHEMES] + ["timesformer_micro_convstem_divided"]
)
def test_micro_models_take_clips_and_care_about_frame_order(name):
    assert is_video_model(name)
    logits, shuffled = logits_in_frame_orders(name, 4, [1, 0, 3, 2])
    assert logits.shape == (2, 5)
    assert (logits - shuffled).abs().max() > 1e-5


@pytest.mark.parametrize(
    ("name", "params", "macs"),
    [
        # Bertasius et al. 2021, Table 1: divided space-time 121.4M parameters, 0.59 TFLOPs for 3 views of 8x224^2
        # (196 GMACs each); joint space-time 86.1M.
        ("timesformer_base_8x224_divided", 121.4e6, 196e9),
        ("timesformer_base_8x224_joint", 86.1e6, None),
    ],
)
def test_parameters_and_macs_match_the_paper(name, params, macs):
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=400).eval()
    assert count_parameters(model) == pytest.approx(params, rel=0.015)
    if macs:
        counter = FlopCounterMode(display=False)
        with counter:
            model(torch.randn(1, 3, 8, 224, 224, device="meta"))
        assert counter.get_total_flops() / 2 == pytest.approx(macs, rel=0.05)


@pytest.mark.parametrize("attention", ("divided", "space"))
def test_from_image_weights_a_still_clip_is_the_image(vit_file, attention):
    """Initialised from a ViT, divided and space-only attention start as the image model: on a clip of one
    repeated frame (time embedding at zero, divided attention's ``temporal_fc`` at zero) their features are the
    ViT's features of that frame. (Joint attention cannot: the CLS competes with T copies of each patch.)"""
    vit, path = vit_file
    model = create_model(f"timesformer_micro_{attention}", num_classes=4, checkpoint=path).eval()
    if attention == "divided":
        block = model.blocks[0]
        assert torch.equal(block.temporal_attn.qkv.weight, vit.blocks[0].attn.qkv.weight)
        assert torch.equal(block.temporal_fc.weight, torch.zeros(96, 96))
    frame = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        video = model.forward_features(frame.unsqueeze(2).expand(-1, -1, 8, -1, -1))
        image = vit.forward_features(frame)[:, 0]
    assert torch.allclose(video, image, atol=1e-5)


def test_joint_attention_loads_image_weights_too(vit_file):
    vit, path = vit_file
    model = create_model("timesformer_micro_joint", num_classes=4, checkpoint=path)
    assert torch.equal(model.blocks[3].attn.proj.weight, vit.blocks[3].attn.proj.weight)
    assert torch.equal(model.patch_embed.proj.weight[:, :, 0], vit.patch_embed.proj.weight)
    assert torch.equal(model.time_embed, torch.zeros_like(model.time_embed))
