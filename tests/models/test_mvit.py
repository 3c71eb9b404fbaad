"""MViT: the stage plan, pooling attention's grids, frame-order dependence and the paper's sizes."""

from __future__ import annotations

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from fovea.models import count_parameters, create_model, is_video_model
from fovea.models.layers import PoolingAttention
from fovea.models.mvit import MViTCfg


def test_mvit_b_stage_plan_follows_the_paper():
    """Fan et al. 2021, Table 3: widths 96/192/384/768 with 1/2/4/8 heads over 1/2/11/2 blocks."""
    plan = MViTCfg().blocks()
    assert [block["dim"] for block in plan] == [96, 192, 192, 384] + [384] * 10 + [768, 768]
    assert [block["dim_out"] for block in plan] == [192, 192, 384, 384] + [384] * 9 + [768, 768, 768]
    assert [block["num_heads"] for block in plan] == [1, 2, 2] + [4] * 11 + [8, 8]
    assert [index for index, block in enumerate(plan) if block["kernel_q"]] == [1, 3, 14]
    # key/value strides keep their grid at 7x7: 56/8, 28/4, 14/2, 7/1
    assert [block["stride_kv"] for block in plan[:4]] == [(1, 8, 8), (1, 4, 4), (1, 4, 4), (1, 2, 2)]
    assert plan[-1]["stride_kv"] == (1, 1, 1)


def test_pooling_attention_shrinks_the_query_grid_and_keeps_the_cls():
    attention = PoolingAttention(
        32, 2, kernel_q=(3, 3, 3), stride_q=(1, 2, 2), kernel_kv=(3, 3, 3), stride_kv=(1, 4, 4)
    )
    tokens = torch.randn(2, 1 + 4 * 8 * 8, 32)
    out, grid = attention(tokens, (4, 8, 8))
    assert grid == (4, 4, 4) and out.shape == (2, 1 + 4 * 4 * 4, 32)
    plain = PoolingAttention(32, 2)
    assert plain.pool_q is None and plain.pool_k is None
    assert plain(tokens, (4, 8, 8))[1] == (4, 8, 8)


def test_micro_model_takes_clips_and_cares_about_frame_order():
    torch.manual_seed(0)
    assert is_video_model("mvit_micro_8x4")
    model = create_model("mvit_micro_8x4", num_classes=5).eval()
    clips = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        logits, reordered = model(clips), model(clips[:, :, torch.tensor([4, 5, 6, 7, 0, 1, 2, 3])])
    assert logits.shape == (2, 5) and (logits - reordered).abs().max() > 1e-5
    with pytest.raises(ValueError, match=r"built for a \(4, 8, 8\) token grid"):
        model(torch.randn(1, 3, 8, 64, 64))


@pytest.mark.parametrize(("name", "frames", "macs"), [("mvit_base_16x4", 16, 70.5e9), ("mvit_base_32x3", 32, 170e9)])
def test_parameters_and_macs_match_the_paper(name, frames, macs):
    """Table 3: MViT-B 16x4 36.6M parameters and 70.5 GFLOPs (multiply-adds) per view; 32x3 170 GFLOPs."""
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=400).eval()
    assert count_parameters(model) == pytest.approx(36.6e6, rel=0.015)
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.randn(1, 3, frames, 224, 224, device="meta"))
    assert counter.get_total_flops() / 2 == pytest.approx(macs, rel=0.05)


def test_presets_take_architecture_arguments():
    """MViTCfg's fields replace the preset's (lists as YAML gives them): MViT-B's preset rebuilt at micro size."""
    with torch.device("meta"):
        micro = create_model("mvit_micro_8x4", num_classes=3)
        rebuilt = create_model(
            "mvit_base_16x4",
            num_classes=3,
            num_frames=8,
            img_size=32,
            depth=5,
            embed_dim=32,
            stage_starts=[1, 3],
            stride_kv=[1, 2, 2],
        )
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in micro.state_dict().items()}
    with pytest.raises(ValueError, match=r"stride_kv must be 3 positive integers"):
        create_model("mvit_micro_8x4", num_classes=3, stride_kv=[2, 2])


def test_own_checkpoint_loads_exactly_and_fits_another_clip(tmp_path):
    """fovea's own MViT files load as they are; for another clip length or size the position tables are resized."""
    from fovea.weights import detect_layout, read_weights

    torch.manual_seed(0)
    trained = create_model("mvit_micro_8x4", num_classes=4).eval()
    path = tmp_path / "mvit.pt"
    torch.save(trained.state_dict(), path)
    assert detect_layout(read_weights(path)).name == "fovea"
    same = create_model("mvit_micro_8x4", num_classes=4, checkpoint=path).eval()
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in trained.state_dict().items())
    longer = create_model("mvit_micro_8x4", num_classes=4, checkpoint=path, num_frames=16, img_size=64)
    assert longer.pos_embed_temporal.shape[1] == 8 and longer.pos_embed_spatial.shape[1] == 16 * 16
    assert torch.equal(longer.blocks[1].attn.qkv.weight, trained.blocks[1].attn.qkv.weight)
    with torch.no_grad():
        assert longer(torch.randn(1, 3, 16, 64, 64)).shape == (1, 4)
