"""The fast path's pieces that run on a CPU: SDPA in every family, activation checkpointing, compile settings,
device prefetching, and the benchmark's FLOP counting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fovea.config import ConfigError, build_config
from fovea.models import create_model
from fovea.train.device import compile_enabled, prefetch_to_device

CPU = torch.device("cpu")

# one model per family and attention variant, at toy sizes: (name, input shape, constructor arguments)
FAMILIES = [
    ("vit_micro_patch4_32", (2, 3, 32, 32), {}),
    ("deit_micro_distilled_patch4_32", (2, 3, 32, 32), {}),
    ("swin_micro_patch2_window4_32", (2, 3, 32, 32), {}),
    ("cvt_micro_32", (2, 3, 32, 32), {}),
    *[(f"vivit_micro_{kind}", (2, 3, 4, 32, 32), {"num_frames": 4}) for kind in ("joint", "fe", "fsa", "fdp")],
    *[(f"timesformer_micro_{kind}", (2, 3, 4, 32, 32), {"num_frames": 4}) for kind in ("divided", "joint", "space")],
    ("mvit_micro_8x4", (2, 3, 8, 32, 32), {"num_frames": 8}),
]


@pytest.mark.parametrize(("name", "shape", "kwargs"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_every_family_attends_through_sdpa(monkeypatch, name, shape, kwargs):
    """Flash/memory-efficient attention on a GPU needs every attention layer to call SDPA, not its own softmax."""
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(*args, **kw):
        calls.append(args[0].shape)
        return sdpa(*args, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    model = create_model(name, num_classes=3, img_size=32, **kwargs).eval()
    with torch.no_grad():
        model(torch.randn(shape))
    depth = sum(1 for module in model.modules() if type(module).__name__.endswith("Attention"))
    assert calls and len(calls) >= depth > 0, (len(calls), depth)


def test_swin_sdpa_matches_its_own_softmax_attention():
    from fovea.models.factory import use_sdpa

    torch.manual_seed(0)
    model = create_model("swin_micro_patch2_window4_32", num_classes=3).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fused = model(images)
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = False
        manual = model(images)
    torch.testing.assert_close(fused, manual, rtol=1e-4, atol=1e-5)
    assert use_sdpa(model) > 0


@pytest.mark.parametrize(
    ("name", "frames"),
    [("mvit_micro_8x4", 8), ("timesformer_micro_divided", 4), ("vivit_micro_fe", 4), ("vivit_micro_joint", 4)],
)
def test_activation_checkpointing_recomputes_blocks_and_keeps_gradients(name, frames):
    def grads_and_calls(checkpointing: bool) -> tuple[list[torch.Tensor], int]:
        torch.manual_seed(0)
        model = create_model(name, num_classes=3, img_size=32, num_frames=frames, drop_path_rate=0.0)
        model.set_grad_checkpointing(checkpointing)
        calls = []
        model.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
        torch.manual_seed(1)
        model(torch.randn(2, 3, frames, 32, 32)).square().sum().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None], len(calls)

    plain, plain_calls = grads_and_calls(False)
    checkpointed, checkpointed_calls = grads_and_calls(True)
    assert checkpointed_calls == 2 * plain_calls  # the block ran again in the backward pass
    assert len(plain) == len(checkpointed)
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_checkpointing_is_off_in_evaluation():
    model = create_model("mvit_micro_8x4", num_classes=3, img_size=32, num_frames=8).eval()
    model.set_grad_checkpointing(True)
    calls = []
    model.blocks[0].register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(torch.randn(1, 3, 8, 32, 32))
    assert len(calls) == 1


def test_compile_setting():
    assert build_config([{}]).train.compile == "auto"
    assert compile_enabled("auto", torch.device("cuda")) and not compile_enabled("auto", CPU)
    assert compile_enabled(True, CPU) and not compile_enabled(False, torch.device("cuda"))
    assert build_config([{"train": {"compile": True, "compile_mode": "max-autotune"}}]).train.compile is True
    with pytest.raises(ConfigError, match="train.compile_mode"):
        build_config([{"train": {"compile_mode": "fastest"}}])
    with pytest.raises(ConfigError, match="train.compile"):
        build_config([{"train": {"compile": "sometimes"}}])


def test_prefetch_passes_cpu_batches_through_in_order():
    batches = [
        {"image": torch.full((2, 3, 4, 4), i, dtype=torch.uint8), "label": torch.tensor([i, i])} for i in range(3)
    ]
    out = list(prefetch_to_device(iter(batches), CPU))
    assert [int(b["label"][0]) for b in out] == [0, 1, 2]
    assert all(o["image"] is b["image"] for o, b in zip(out, batches, strict=True))
    assert list(prefetch_to_device(iter([]), CPU)) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: the copies run on a side CUDA stream")
def test_prefetch_copies_to_the_gpu():
    device = torch.device("cuda")
    batches = [{"image": torch.full((2, 3), i, dtype=torch.uint8).pin_memory()} for i in range(4)]
    out = [b["image"].sum().item() for b in prefetch_to_device(iter(batches), device)]
    assert out == [0, 6, 12, 18]


def test_flop_count_matches_the_vit_formula():
    """FlopCounterMode's count for a plain ViT against the closed form (2 FLOPs per multiply-add, backward 2x)."""
    from fovea.benchmark import count_train_flops

    cfg = build_config([{"model": {"name": "vit_micro_patch4_32", "img_size": 32}}])
    model = create_model("vit_micro_patch4_32", num_classes=8)
    dim, depth = model.embed_dim, len(model.blocks)
    tokens = 1 + (32 // 4) ** 2
    hidden = model.blocks[0].mlp.fc1.out_features
    attention = 2 * 2 * tokens * tokens * dim  # QK^T and AV
    per_block = 2 * tokens * (4 * dim * dim + 2 * dim * hidden) + attention
    patchify = 2 * (32 // 4) ** 2 * (3 * 16) * dim
    forward = depth * per_block + patchify + 2 * dim * 8
    counted = count_train_flops(cfg, 8, CPU)
    # backward is twice the forward, less the gradient of the input images, which nothing needs, plus the
    # attention scores the fused backward kernel computes again (2.5x its forward, as torch counts it)
    assert counted == pytest.approx(3 * forward - patchify + 0.5 * depth * attention, rel=0.001)
