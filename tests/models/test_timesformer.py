"""TimeSformer: the three attention schemes' shapes and frame-order dependence, the two space-only variants, the
paper's sizes, image weights."""

from __future__ import annotations

import pytest
import timm
import torch
from helpers import logits_in_frame_orders
from torch.utils.flop_counter import FlopCounterMode

from fovea.models import count_parameters, create_model, is_video_model


@pytest.mark.parametrize(
    "name", ["timesformer_micro_divided", "timesformer_micro_joint", "timesformer_micro_convstem_divided"]
)
def test_micro_models_take_clips_and_care_about_frame_order(name):
    assert is_video_model(name)
    logits, shuffled = logits_in_frame_orders(name, 4, [1, 0, 3, 2])
    assert logits.shape == (2, 5)
    assert (logits - shuffled).abs().max() > 1e-5


def _space_model(variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("timesformer_micro_space", num_classes=5, num_frames=4, space_variant=variant).eval()
    with torch.no_grad():
        for param in model.parameters():  # away from the initial constants (zero time embedding, unit norms)
            param.add_(0.1 * torch.randn_like(param))
    return model


def test_space_only_as_the_paper_code_has_no_time_embedding_and_pools_before_the_norm():
    """vit.py (attention type ``space_only``): no time embedding, so blind to frame order; the frames' tokens are
    averaged, then normed, and the CLS is the feature (not the average of each frame's normed CLS)."""
    model = _space_model("paper")
    assert model.time_embed is None and "time_embed" not in model.state_dict()
    assert "time_embed" not in model.no_weight_decay()
    clips = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        features = model.forward_features(clips)
        shuffled = model.forward_features(clips[:, :, torch.tensor([2, 0, 3, 1])])
        # the pooling computed here on its own: a ViT over every frame, all tokens averaged over frames, then norm
        patches = model.patch_embed(clips) + model.pos_embed[:, None, 1:]  # (B, T, N, D)
        cls = (model.cls_token + model.pos_embed[:, :1]).expand(2, 4, 1, -1)
        tokens = torch.cat([cls, patches], dim=2).flatten(0, 1)  # (B*T, 1 + N, D): one image per frame
        for block in model.blocks:
            tokens = block(tokens)
        expected = model.norm(tokens.view(2, 4, *tokens.shape[1:]).mean(dim=1))[:, 0]
    assert torch.allclose(features, expected, atol=1e-5)
    assert torch.allclose(features, shuffled, atol=1e-5)


def test_space_only_timed_variant_keeps_a_time_embedding_and_sees_frame_order():
    model = _space_model("timed")
    assert model.time_embed.shape == (1, 4, 96)
    clips = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        logits = model(clips)
        shuffled = model(clips[:, :, torch.tensor([2, 0, 3, 1])])
    assert (logits - shuffled).abs().max() > 1e-5
    # the paper's pooling differs from this one even with the time embedding at zero
    paper = _space_model("paper")
    paper.load_state_dict({k: v for k, v in model.state_dict().items() if k != "time_embed"})
    with torch.no_grad():
        model.time_embed.zero_()
        assert (model(clips) - paper(clips)).abs().max() > 1e-4


def test_an_unknown_space_variant_is_refused():
    with pytest.raises(ValueError, match="space_variant must be one of paper, timed"):
        create_model("timesformer_micro_space", num_classes=5, space_variant="averaged")


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


@pytest.mark.parametrize(
    ("attention", "kwargs"), [("divided", {}), ("space", {}), ("space", {"space_variant": "timed"})]
)
def test_from_image_weights_a_still_clip_is_the_image(vit_file, attention, kwargs):
    """Initialised from a ViT, divided and space-only attention start as the image model: on a clip of one
    repeated frame (time embedding at zero, divided attention's ``temporal_fc`` at zero) their features are the
    ViT's features of that frame. (Joint attention cannot: the CLS competes with T copies of each patch.)"""
    vit, path = vit_file
    model = create_model(f"timesformer_micro_{attention}", num_classes=4, checkpoint=path, **kwargs).eval()
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
