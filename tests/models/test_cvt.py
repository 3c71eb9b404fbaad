"""CvT (Wu et al. 2021): shapes, the convolutional projection, the class token, and sizes against the paper."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.optim import create_optimizer_v2
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fovea.models import count_parameters, create_model, load_weights
from fovea.models.cvt import ConvAttention, Cvt, CvtCfg, model_cfgs

PRESETS = ["cvt_13_224", "cvt_21_224", "cvt_13_384", "cvt_21_384", "cvt_w24_384", "cvt_micro_32"]


def _small_cfg(**overrides: object) -> CvtCfg:
    """Two short stages at 32x32: fast enough to build many of in one test."""
    args = dict(
        depths=(1, 1), embed_dims=(16, 32), head_dim=16, patch_size=(3, 3), patch_stride=(2, 2), patch_padding=1
    )
    return CvtCfg(**{**args, **overrides})


def test_presets_are_registered_in_timm():
    assert set(PRESETS) <= set(timm.list_models("cvt_*"))
    cfg = timm.create_model("cvt_micro_32", num_classes=3).pretrained_cfg
    assert cfg["classifier"] == "head" and cfg["first_conv"] == "stages.0.patch_embed.proj"
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["input_size"] == (3, 32, 32)


def test_micro_forward_shapes_and_gradients():
    torch.manual_seed(0)
    model = timm.create_model("cvt_micro_32", num_classes=5, drop_rate=0.1)  # no drop path: it may skip a block
    x = torch.randn(2, 3, 32, 32)
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 1 + 4 * 4, 192)  # class token + the last stage's 4x4 grid
    assert model.forward_head(tokens, pre_logits=True).shape == (2, 192)
    out = model(x)
    assert out.shape == (2, 5)
    out.sum().backward()
    # The last block's spatial queries feed only spatial outputs, which the head (class token) never reads; the
    # class token's own query bypasses the convolution. So that one depthwise projection gets zero gradient.
    unused = "stages.2.blocks.2.attn.conv_proj_q."
    for name, param in model.named_parameters():
        assert param.grad is not None
        assert (param.grad.abs().sum() > 0) != name.startswith(unused), name


def test_224_model_through_fovea_front_door_and_other_sizes():
    model = create_model("cvt_13_224", num_classes=10, img_size=224).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 10)
        # no position embedding: the same weights take another resolution
        assert model.forward_features(torch.randn(1, 3, 96, 96)).shape == (1, 1 + 6 * 6, 384)
    assert isinstance(model.stages[2].blocks[-1].drop_path1, nn.Identity)
    dropped = create_model("cvt_13_224", num_classes=10, drop_path_rate=0.2)
    assert dropped.stages[2].blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)


def test_no_position_embedding_and_class_token_only_in_last_stage():
    model = timm.create_model("cvt_micro_32", num_classes=2)
    names = [name for name, _ in model.named_parameters()]
    assert not [n for n in names if "pos" in n]
    assert [n for n in names if "cls_token" in n] == ["stages.2.cls_token"]
    assert model.no_weight_decay() == {"stages.2.cls_token"}
    seen = []
    for stage in model.stages:
        stage.register_forward_hook(lambda module, args, out: seen.append(out[0].shape))
    model(torch.randn(1, 3, 32, 32))
    assert seen == [(1, 16 * 16, 64), (1, 8 * 8, 128), (1, 1 + 4 * 4, 192)]


def _record_attention_shapes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.Size, ...]]:
    """Patch SDPA to append the ``(q, k, v)`` shapes of every call, each ``(B, heads, N, head_dim)``."""
    shapes: list[tuple[torch.Size, ...]] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: object) -> torch.Tensor:
        shapes.append((q.shape, k.shape, v.shape))
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    return shapes


@pytest.mark.parametrize("stride_kv", [1, 2, 4])
def test_keys_and_values_are_reduced_by_stride_kv(stride_kv, monkeypatch):
    """Queries keep every token, keys and values come from the strided map; the class token joins both."""
    shapes = _record_attention_shapes(monkeypatch)
    model = Cvt(_small_cfg(stride_kv=stride_kv), num_classes=2)
    model(torch.randn(2, 3, 32, 32))
    kv_side = [-(-16 // stride_kv), -(-8 // stride_kv)]  # ceil: padded 3x3 depthwise conv
    assert shapes == [
        ((2, 1, 16 * 16, 16), (2, 1, kv_side[0] ** 2, 16), (2, 1, kv_side[0] ** 2, 16)),
        ((2, 2, 1 + 8 * 8, 16), (2, 2, 1 + kv_side[1] ** 2, 16), (2, 2, 1 + kv_side[1] ** 2, 16)),
    ]


def test_conv_projection_is_depthwise_without_bias_then_batchnorm():
    attn = timm.create_model("cvt_micro_32").stages[1].blocks[0].attn
    assert isinstance(attn, ConvAttention)
    for proj, stride in ((attn.conv_proj_q, 1), (attn.conv_proj_k, 2), (attn.conv_proj_v, 2)):
        assert proj.conv.groups == proj.conv.in_channels == 128 and proj.conv.bias is None
        assert proj.conv.kernel_size == (3, 3) and proj.conv.stride == (stride, stride)
        assert isinstance(proj.bn, nn.BatchNorm2d)
    assert attn.proj_q.bias is not None and attn.proj_k.bias is not None and attn.proj_v.bias is not None


def test_classifier_interface_and_layer_decay_groups():
    model = timm.create_model("cvt_micro_32", num_classes=4)
    assert model.get_classifier() is model.head and model.head.out_features == 4
    model.reset_classifier(7)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    model.reset_classifier(0, global_pool="avg")
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 192)

    model = timm.create_model("cvt_micro_32", num_classes=4)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    names = {id(p): name for name, p in model.named_parameters()}
    groups = {names[id(p)]: group for group in optimizer.param_groups for p in group["params"]}
    # group_matcher: the first embedding, then one layer per block (a stage's embedding and class token join its
    # first block, the final norm its last), then the head
    order = [
        "stages.0.patch_embed.proj.weight",
        "stages.0.blocks.0.mlp.fc1.weight",
        "stages.1.patch_embed.proj.weight",
        "stages.1.blocks.1.mlp.fc1.weight",
        "stages.2.cls_token",
        "stages.2.blocks.1.mlp.fc1.weight",
        "stages.2.blocks.2.mlp.fc1.weight",
        "head.weight",
    ]
    scales = [groups[name]["lr_scale"] for name in order]
    assert scales == sorted(set(scales)) and scales[-1] == 1.0
    assert groups["stages.2.cls_token"]["weight_decay"] == 0  # no_weight_decay()
    assert groups["stages.2.blocks.0.attn.conv_proj_q.conv.weight"]["weight_decay"] == 0.05


def test_loads_the_authors_key_layout(tmp_path):
    """The official checkpoints name stages ``stage0``.. instead of ``stages.0``; the filter maps them."""
    source = timm.create_model("cvt_micro_32", num_classes=8)
    path = tmp_path / "cvt.pth"
    torch.save({"model": {k.replace("stages.", "stage", 1): v for k, v in source.state_dict().items()}}, path)
    target = timm.create_model("cvt_micro_32", num_classes=8)
    report = load_weights(target, path)
    assert report.reset_head == [] and report.layout == "microsoft-cvt"
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(target.eval()(x), source.eval()(x))


@pytest.mark.parametrize("name", PRESETS)
def test_published_presets_follow_the_authors_code_and_micro_keeps_its_own(name):
    """The authors' cls_cvt.py: attention scaled by the width ``dim ** -0.5`` and QuickGELU in the MLPs; the demo's
    cvt_micro_32 keeps the head-width scale and exact GELU it was tuned with."""
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=2)
    micro = name == "cvt_micro_32"
    assert model.cfg.attn_scale == ("head_dim" if micro else "dim")
    assert model.cfg.act_layer == ("gelu" if micro else "quick_gelu")
    for stage in model.stages:
        for block in stage.blocks:
            attn = block.attn
            width = attn.head_dim if micro else attn.num_heads * attn.head_dim
            assert attn.scale == pytest.approx(width**-0.5)
            assert type(block.mlp.act).__name__ == ("GELU" if micro else "QuickGELU")
    assert model.norm.eps == 1e-5 and model.stages[0].blocks[0].attn.conv_proj_k.bn.eps == 1e-5


@pytest.mark.parametrize("attn_scale", ["dim", "head_dim"])
def test_attention_scale_by_hand(attn_scale):
    """softmax(Q K^T * scale) V with the scale the argument names, the class token joining Q, K and V."""
    torch.manual_seed(0)
    attn = ConvAttention(24, 3, stride_kv=2, has_cls_token=True, attn_scale=attn_scale).eval()
    x, size = torch.randn(2, 1 + 4 * 4, 24), (4, 4)
    with torch.no_grad():
        grid = x[:, 1:].transpose(1, 2).reshape(2, 24, 4, 4)
        q, k, v = (
            proj(torch.cat((x[:, :1], conv(grid)), dim=1)).view(2, -1, 3, 8).transpose(1, 2)
            for conv, proj in (
                (attn.conv_proj_q, attn.proj_q),
                (attn.conv_proj_k, attn.proj_k),
                (attn.conv_proj_v, attn.proj_v),
            )
        )
        scale = (24 if attn_scale == "dim" else 8) ** -0.5
        expected = ((q @ k.transpose(-1, -2)) * scale).softmax(-1) @ v
        expected = attn.proj(expected.transpose(1, 2).reshape(2, -1, 24))
        torch.testing.assert_close(attn(x, size), expected, rtol=1e-5, atol=1e-6)


def test_create_model_takes_architecture_arguments():
    """``CvtCfg`` fields given to create_model replace the preset's: any published shape from one preset."""
    model = create_model(
        "cvt_13_224", num_classes=3, depths=[1, 1, 2], embed_dims=[16, 32, 48], num_heads=[1, 2, 3], act_layer="gelu"
    )
    assert (model.cfg.depths, model.cfg.num_heads, model.cfg.attn_scale) == ((1, 1, 2), (1, 2, 3), "dim")
    assert type(model.stages[2].blocks[1].mlp.act).__name__ == "GELU"
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    assert model_cfgs["cvt_13"]["depths"] == (1, 2, 10)  # the preset itself is untouched
    with pytest.raises(ValueError, match="attn_scale"):
        create_model("cvt_micro_32", num_classes=2, attn_scale="heads")


def test_config_derives_per_stage_values():
    cfg = CvtCfg(depths=(2, 2, 20), embed_dims=(192, 768, 1024))
    assert cfg.num_heads == (3, 12, 16)  # 64 channels per head, as in the paper's Table 2
    assert cfg.stride_kv == (2, 2, 2) and cfg.stage_has_cls_token == (False, False, True)
    with pytest.raises(ValueError, match="patch_stride"):
        CvtCfg(patch_stride=(4, 2))


# The paper's sizes (Wu et al. 2021, Tables 2-3): CvT-13 20.0M parameters, 4.5 GFLOPs; CvT-21 31.6M, 7.1 GFLOPs at
# 224x224. Its "FLOPs" are multiply-accumulates (MACs), as is usual in vision papers.
PAPER = {"cvt_13_224": (20.0e6, 4.5e9), "cvt_21_224": (31.6e6, 7.1e9)}


def _meta_model(name: str) -> nn.Module:
    with torch.device("meta"):  # no memory, no init cost: shapes and FLOPs only
        return timm.create_model(name, num_classes=1000).eval()


def _attention_macs(model: nn.Module, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> int:
    """The attention matmuls by hand: QK^T and AV each cost ``N_q * N_kv * head_dim`` MACs per head and image."""
    shapes = _record_attention_shapes(monkeypatch)
    model(x)
    monkeypatch.undo()
    return sum(2 * batch * heads * n_q * head_dim * k[2] for (batch, heads, n_q, head_dim), k, _ in shapes)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_parameters_and_macs_match_the_paper(name, monkeypatch):
    """Parameters within 1% and MACs within 5% of the paper, counting the attention matmuls.

    MACs are ``FlopCounterMode`` FLOPs / 2 for one 224x224 image on the meta device. The counter sees
    convolutions (token embeddings, depthwise Q/K/V projections) and matmuls (every linear layer, and the attention
    matmuls QK^T and AV, which SDPA on the meta device runs as ``aten.bmm``); it skips norms, activations, softmax
    and residual adds, as the paper's count does. The fused CPU SDPA kernel is invisible to the counter, hence the
    meta device; the test checks the counted attention against ``N_q * N_kv * head_dim`` per head by hand.

    Counting the attention matmuls matches the paper: CvT-13 4.57 vs 4.5 GMACs, CvT-21 7.18 vs 7.1. Leaving them
    out gives 4.06 and 6.51 GMACs, 10% and 8% low.
    """
    params, macs = PAPER[name]
    model = _meta_model(name)
    assert count_parameters(model) == pytest.approx(params, rel=0.01)
    x = torch.randn(1, 3, 224, 224, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    counts = {str(op): flops / 2 for op, flops in counter.get_flop_counts()["Global"].items()}
    total = sum(counts.values())
    attention = total - sum(counts.get(op, 0) for op in ("aten.convolution", "aten.mm", "aten.addmm"))
    assert attention == _attention_macs(model, x, monkeypatch)  # QK^T and AV were counted, whatever op ran them
    assert total == pytest.approx(macs, rel=0.05)
    assert total - attention < 0.95 * macs  # without the attention matmuls the count falls short
