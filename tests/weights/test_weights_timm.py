"""The official DeiT and Swin releases load through timm's checkpoint filters and fovea's strict check: Facebook's
DeiT files nest the weights under ``model`` beside the optimizer state; Microsoft's Swin files put each stage's
patch merging at the end of the stage (timm: the start of the next), name the classifier ``head`` (timm: ``head.fc``)
and carry ``relative_position_index`` buffers."""

from __future__ import annotations

import re

import pytest
import timm
import torch

from fovea.models import create_model

SWIN = dict(depths=(1, 1, 1, 1), embed_dim=32, num_heads=(1, 2, 4, 8), img_size=64, window_size=4)
DEIT = dict(img_size=32, patch_size=8, depth=2)


def _microsoft_swin_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = {}
    for key, value in model.state_dict().items():
        key = re.sub(r"^layers\.(\d+)\.downsample", lambda found: f"layers.{int(found[1]) - 1}.downsample", key)
        state[key.replace("head.fc.", "head.")] = value
    for i, layer in enumerate(model.layers):
        for j, block in enumerate(layer.blocks):
            state[f"layers.{i}.blocks.{j}.attn.relative_position_index"] = block.attn.relative_position_index
    return state


def test_microsoft_swin_file_gives_the_same_logits(tmp_path):
    torch.manual_seed(0)
    reference = timm.create_model("swin_tiny_patch4_window7_224", num_classes=10, **SWIN).eval()
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": _microsoft_swin_layout(reference)}, path)
    loaded = create_model("swin_tiny_patch4_window7_224", num_classes=10, checkpoint=str(path), **SWIN).eval()
    inputs = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (loaded(inputs) - reference(inputs)).abs().max() <= 1e-5
    assert loaded.load_report.reset_head == []
    # fine-tuning on 4 classes: only the classifier starts afresh
    tuned = create_model("swin_tiny_patch4_window7_224", num_classes=4, checkpoint=str(path), **SWIN)
    assert tuned.load_report.reset_head == ["head.fc.weight", "head.fc.bias"]


def test_facebook_deit_distilled_file_loads_with_both_heads_and_refuses_a_plain_vit(tmp_path):
    torch.manual_seed(0)
    reference = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=10, **DEIT).eval()
    path = tmp_path / "deit_tiny_distilled.pth"
    torch.save({"model": reference.state_dict(), "optimizer": {"step": torch.tensor(3)}, "epoch": 3}, path)
    loaded = create_model("deit_tiny_distilled_patch16_224", num_classes=10, checkpoint=str(path), **DEIT).eval()
    inputs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(inputs), reference(inputs))
    with pytest.raises(ValueError, match=r"shapes do not fit VisionTransformer: pos_embed \(1, 18, 192\)"):
        create_model("vit_tiny_patch16_224", num_classes=10, checkpoint=str(path), **DEIT)


def _google_npz(model: torch.nn.Module, path, heads: int) -> dict:
    """A timm ViT's weights written in Google's JAX checkpoint names and shapes (the original ViT/AugReg .npz)."""
    import numpy as np

    state = {k: v.detach() for k, v in model.state_dict().items()}
    dim = state["cls_token"].shape[-1]
    arrays = {
        "embedding/kernel": state["patch_embed.proj.weight"].permute(2, 3, 1, 0),  # OIHW -> HWIO
        "embedding/bias": state["patch_embed.proj.bias"],
        "cls": state["cls_token"],
        "Transformer/posembed_input/pos_embedding": state["pos_embed"],
        "Transformer/encoder_norm/scale": state["norm.weight"],
        "Transformer/encoder_norm/bias": state["norm.bias"],
        "head/kernel": state["head.weight"].T,
        "head/bias": state["head.bias"],
    }
    for i in range(len(model.blocks)):
        ours, theirs = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        for norm, name in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            arrays[f"{theirs}{name}/scale"], arrays[f"{theirs}{name}/bias"] = (
                state[f"{ours}{norm}.weight"], state[f"{ours}{norm}.bias"])  # fmt: skip
        weight, bias = state[f"{ours}attn.qkv.weight"], state[f"{ours}attn.qkv.bias"]
        attention = f"{theirs}MultiHeadDotProductAttention_1/"
        for j, name in enumerate(("query", "key", "value")):
            arrays[f"{attention}{name}/kernel"] = weight[j * dim : (j + 1) * dim].T.reshape(dim, heads, -1)
            arrays[f"{attention}{name}/bias"] = bias[j * dim : (j + 1) * dim].reshape(heads, -1)
        arrays[f"{attention}out/kernel"] = state[f"{ours}attn.proj.weight"].T.reshape(heads, -1, dim)
        arrays[f"{attention}out/bias"] = state[f"{ours}attn.proj.bias"]
        for k, fc in enumerate(("fc1", "fc2")):
            arrays[f"{theirs}MlpBlock_3/Dense_{k}/kernel"] = state[f"{ours}mlp.{fc}.weight"].T
            arrays[f"{theirs}MlpBlock_3/Dense_{k}/bias"] = state[f"{ours}mlp.{fc}.bias"]
    arrays = {key: value.numpy() for key, value in arrays.items()}
    np.savez(path, **arrays)
    return arrays


def test_google_vit_npz_loads_through_timm_and_is_held_to_account(tmp_path):
    import numpy as np

    from fovea.weights import detect_layout, read_weights

    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_patch16_224", num_classes=10, **DEIT).eval()
    path = tmp_path / "ViT-Ti_16.npz"
    arrays = _google_npz(reference, path, heads=3)
    assert detect_layout(read_weights(path)).name == "google-vit-npz"
    loaded = create_model("vit_tiny_patch16_224", num_classes=10, checkpoint=str(path), **DEIT).eval()
    inputs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(inputs), reference(inputs))
    tuned = create_model("vit_tiny_patch16_224", num_classes=4, checkpoint=str(path), **DEIT)
    assert tuned.load_report.reset_head == ["head.weight", "head.bias"] and not tuned.head.weight.isnan().any()
    del arrays["Transformer/encoderblock_1/LayerNorm_2/scale"]
    np.savez(tmp_path / "partial.npz", **arrays)
    with pytest.raises(ValueError, match="partial.npz: does not fit VisionTransformer .*LayerNorm_2/scale"):
        create_model("vit_tiny_patch16_224", num_classes=10, checkpoint=str(tmp_path / "partial.npz"), **DEIT)
