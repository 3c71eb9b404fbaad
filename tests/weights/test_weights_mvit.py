"""Published MViT (v1) weights load into fovea's MViT and give the reference's logits.

The reference is torchvision's ``MViT`` (``mvit_v1_b``'s class) built at fovea's ``mvit_micro_8x4`` size with random
weights. torchvision's file is its own ``state_dict``; PySlowFast (not installable) and pytorchvideo (not installed)
files are the same tensors written in their key layouts (read from ``slowfast/models/video_model_builder.py`` and
``attention.py``, and ``pytorchvideo/models/vision_transformers.py`` and ``layers/attention.py``), nested as their
``.pyth`` files are, with PySlowFast's ``cfg`` YAML beside the weights.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from torchvision.models.video.mvit import MSBlockConfig, MViT

from fovea.models import create_model
from fovea.weights import detect_layout, read_weights
from fovea.weights.mvit import LAYOUTS

FRAMES, SIZE, CLASSES = 8, 32, 5
TOLERANCE = 1e-4


def micro_blocks(kernel: list[int], stride_kv: list[int]) -> list[MSBlockConfig]:
    """fovea's mvit_micro_8x4 plan in torchvision's form: 5 blocks, widths 32/64/128, heads 1/2/4."""
    plain = [1, 1, 1]
    rows = [  # heads, in, out, pools queries
        (1, 32, 64, False),
        (2, 64, 64, True),
        (2, 64, 128, False),
        (4, 128, 128, True),
        (4, 128, 128, False),
    ]
    blocks, kv = [], stride_kv
    for heads, dim_in, dim_out, pool_q in rows:
        if pool_q:
            kv = [max(s // q, 1) for s, q in zip(kv, [1, 2, 2], strict=True)]
        blocks.append(
            MSBlockConfig(heads, dim_in, dim_out, kernel if pool_q else [], kernel, [1, 2, 2] if pool_q else plain, kv)
        )
    return blocks


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every tensor random and distinct (torchvision starts LayerNorms at 1 and 0, which would hide a swap)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def reference() -> MViT:
    model = MViT(
        spatial_size=(SIZE, SIZE),
        temporal_size=FRAMES,
        block_setting=micro_blocks([3, 3, 3], [1, 2, 2]),
        residual_pool=False,
        residual_with_cls_embed=True,
        rel_pos_embed=False,
        proj_after_attn=False,
        num_classes=CLASSES,
    )
    return randomised(model, 0)


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    return torch.randn(2, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def tv_state(model: MViT) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _common_blocks(key: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    """A torchvision block key in the names PySlowFast and pytorchvideo share (pool convs and norms apart)."""
    for old, new in ((".attn.project.0.", ".attn.proj."), (".mlp.0.", ".mlp.fc1."), (".mlp.3.", ".mlp.fc2.")):
        key = key.replace(old, new)
    key = key.replace(".project.", ".proj.")
    for letter in "qkv":
        key = key.replace(f".attn.pool_{letter}.pool.weight", f".attn.pool_{letter}.weight")
        key = key.replace(f".attn.pool_{letter}.norm_act.0.", f".attn.norm_{letter}.")
    return {key: value}


def _split_qkv(key: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    stem, param = key.rsplit(".qkv.", 1)
    return {f"{stem}.{letter}.{param}": part.clone() for letter, part in zip("qkv", value.chunk(3), strict=True)}


def slowfast_state(model: MViT, *, split_qkv: bool) -> dict[str, torch.Tensor]:
    """PySlowFast's MViT keys: split q/k/v as its first MViT releases wrote them, fused as its current code does."""
    out: dict[str, torch.Tensor] = {}
    for key, value in tv_state(model).items():
        if key.startswith("conv_proj."):
            out[key.replace("conv_proj.", "patch_embed.proj.")] = value
        elif key.startswith("pos_encoding."):
            name = {"class_token": "cls_token", "class_pos": "pos_embed_class"}.get(key.split(".")[1])
            table = {"spatial_pos": "pos_embed_spatial", "temporal_pos": "pos_embed_temporal"}.get(key.split(".")[1])
            out[name or table] = value.reshape(1, 1, -1) if name else value.unsqueeze(0)
        elif key.startswith("head.1."):
            out[key.replace("head.1.", "head.projection.")] = value
        elif split_qkv and ".attn.qkv." in key:
            out.update(_split_qkv(key, value))
        else:
            out.update(_common_blocks(key, value))
    return out


def pytorchvideo_state(model: MViT) -> dict[str, torch.Tensor]:
    """pytorchvideo's keys: split q/k/v (its default), and each pool listed twice, as its state_dict() does."""
    out: dict[str, torch.Tensor] = {}
    for key, value in slowfast_state(model, split_qkv=True).items():
        if key.startswith("patch_embed.proj."):
            out[key.replace("patch_embed.proj.", "patch_embed.patch_model.")] = value
        elif key in ("cls_token", "pos_embed_spatial", "pos_embed_temporal", "pos_embed_class"):
            out[f"cls_positional_encoding.{key}"] = value
        elif key.startswith("head.projection."):
            out[key.replace("head.projection.", "head.proj.")] = value
        elif key.startswith("norm."):
            out[key.replace("norm.", "norm_embed.")] = value
        else:
            out[key] = value
            for letter in "qkv":
                if f".attn.pool_{letter}.weight" in key:
                    out[key.replace(f".pool_{letter}.weight", f"._attention_pool_{letter}.pool.weight")] = value
                if f".attn.norm_{letter}." in key:
                    out[key.replace(f".norm_{letter}.", f"._attention_pool_{letter}.norm.")] = value
    return out


def slowfast_cfg(**data: object) -> str:
    """The parts of a PySlowFast ``cfg.dump()`` the converter reads, for the micro model."""
    tree = {
        "DATA": {
            "NUM_FRAMES": FRAMES,
            "SAMPLING_RATE": 4,
            "TRAIN_CROP_SIZE": SIZE,
            "TEST_CROP_SIZE": SIZE,
            "MEAN": [0.45, 0.45, 0.45],
            "STD": [0.225, 0.225, 0.225],
            **data,
        },
        "MODEL": {"NUM_CLASSES": CLASSES, "ARCH": "mvit", "MODEL_NAME": "MViT"},
        "MVIT": {
            "DEPTH": 5,
            "EMBED_DIM": 32,
            "NUM_HEADS": 1,
            "MODE": "conv",
            "POOL_FIRST": False,
            "SEP_POS_EMBED": True,
            "PATCH_KERNEL": [3, 7, 7],
            "PATCH_STRIDE": [2, 4, 4],
            "PATCH_PADDING": [1, 3, 3],
            "DIM_MUL": [[1, 2.0], [3, 2.0]],
            "HEAD_MUL": [[1, 2.0], [3, 2.0]],
            "POOL_KVQ_KERNEL": [3, 3, 3],
            "POOL_KV_STRIDE_ADAPTIVE": [1, 2, 2],
            "POOL_Q_STRIDE": [[1, 1, 2, 2], [3, 1, 2, 2]],
            "RESIDUAL_POOLING": False,
            "DIM_MUL_IN_ATT": False,
            "REV": {"ENABLE": False},
        },
    }
    return yaml.safe_dump(tree)


def max_difference(model: torch.nn.Module, reference: torch.nn.Module, clips: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(clips) - reference(clips)).abs().max())


@pytest.fixture(scope="module")
def files(tmp_path_factory, reference):
    """One file per published layout, as the releases ship them."""
    folder = tmp_path_factory.mktemp("mvit_files")
    paths = {
        "torchvision-mvit": folder / "mvit_v1_b.pth",
        "pyslowfast-mvit": folder / "MVIT_B_16x4_CONV.pyth",
        "pyslowfast-mvit-split": folder / "MVIT_B_16x4_CONV_split.pyth",
        "pytorchvideo-mvit": folder / "MVIT_B_16x4.pyth",
    }
    torch.save(tv_state(reference), paths["torchvision-mvit"])
    cfg = slowfast_cfg(MEAN=[0.4, 0.45, 0.5], STD=[0.2, 0.225, 0.25])
    for name, split in (("pyslowfast-mvit", False), ("pyslowfast-mvit-split", True)):
        checkpoint = {"epoch": 200, "model_state": slowfast_state(reference, split_qkv=split), "cfg": cfg}
        torch.save(checkpoint, paths[name])
    torch.save({"model_state": pytorchvideo_state(reference)}, paths["pytorchvideo-mvit"])
    return paths


@pytest.mark.parametrize("kind", ["torchvision-mvit", "pyslowfast-mvit", "pyslowfast-mvit-split", "pytorchvideo-mvit"])
def test_published_file_gives_the_reference_logits(kind, files, reference, clips):
    path = files[kind]
    assert detect_layout(read_weights(path)).name == kind.removesuffix("-split")
    model = create_model("mvit_micro_8x4", num_classes=CLASSES, checkpoint=path)
    assert model.load_report.reset_head == []
    assert max_difference(model, reference, clips) <= TOLERANCE


def test_pyslowfast_cfg_gives_clip_normalisation_and_architecture(files, reference, clips):
    """describe() reads the .pyth's YAML; its suggested preset and model_args rebuild the architecture."""
    path = files["pyslowfast-mvit"]
    info = detect_layout(read_weights(path)).describe(read_weights(path))
    assert (info.num_classes, info.num_frames, info.frame_interval, info.img_size) == (CLASSES, FRAMES, 4, SIZE)
    assert info.mean == (0.4, 0.45, 0.5) and info.std == (0.2, 0.225, 0.25)
    assert info.suggested_model == "mvit_base_16x4"
    assert info.model_args == {"depth": 5, "embed_dim": 32, "stage_starts": (1, 3), "stride_kv": (1, 2, 2)}
    model = create_model(
        info.suggested_model,
        num_classes=info.num_classes,
        num_frames=info.num_frames,
        img_size=info.img_size,
        checkpoint=path,
        **info.model_args,
    )
    assert model.pretrained_cfg["mean"] == (0.4, 0.45, 0.5)  # the file's normalisation is now the model's
    assert max_difference(model, reference, clips) <= TOLERANCE


def test_files_without_a_config_get_the_published_kinetics_defaults(files):
    for kind in ("torchvision-mvit", "pytorchvideo-mvit"):
        source = read_weights(files[kind])
        info = detect_layout(source).describe(source)
        assert (info.num_classes, info.num_frames, info.img_size) == (CLASSES, FRAMES, SIZE)
        assert info.mean == (0.45, 0.45, 0.45) and info.std == (0.225, 0.225, 0.225)
        assert info.model_args == {"depth": 5, "embed_dim": 32, "stage_starts": (1, 3)}  # strides are not recorded


def test_missing_or_renamed_tensor_is_a_one_line_error_naming_it(tmp_path, reference):
    state = tv_state(reference)
    del state["blocks.2.attn.pool_k.pool.weight"]
    state["blocks.1.norm_1.weight"] = state.pop("blocks.1.norm1.weight")
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as caught:
        create_model("mvit_micro_8x4", num_classes=CLASSES, checkpoint=path)
    message = str(caught.value)
    assert "\n" not in message and "torchvision-mvit" in message
    assert "missing" in message and "blocks.2.attn.pool_k.conv.weight" in message
    assert "blocks.1.norm1.weight" in message and "unexpected blocks.1.norm_1.weight" in message


def test_wrong_family_and_mvitv2_are_refused(tmp_path, files, reference):
    with pytest.raises(ValueError, match=r"holds pyslowfast-mvit weights \(mvit\)"):
        create_model("vivit_micro_fe", num_classes=CLASSES, checkpoint=files["pyslowfast-mvit"])
    state = slowfast_state(reference, split_qkv=False)
    state["blocks.0.attn.rel_pos_h"] = torch.zeros(15, 32)
    torch.save({"model_state": state, "cfg": slowfast_cfg()}, tmp_path / "mvitv2.pyth")
    with pytest.raises(ValueError, match="MViTv2 weights"):
        create_model("mvit_micro_8x4", num_classes=CLASSES, checkpoint=tmp_path / "mvitv2.pyth")
    v2 = MViT(
        spatial_size=(SIZE, SIZE),
        temporal_size=FRAMES,
        block_setting=micro_blocks([3, 3, 3], [1, 2, 2]),
        residual_pool=True,
        residual_with_cls_embed=False,
        rel_pos_embed=True,
        proj_after_attn=True,
    )
    torch.save(v2.state_dict(), tmp_path / "mvit_v2_s.pth")
    assert detect_layout(read_weights(tmp_path / "mvit_v2_s.pth")).name == "torchvision-mvit"
    with pytest.raises(ValueError, match=r"torchvision's MViTv2 \(mvit_v2_s"):
        create_model("mvit_micro_8x4", num_classes=CLASSES, checkpoint=tmp_path / "mvit_v2_s.pth")
    pool_first = slowfast_cfg().replace("POOL_FIRST: false", "POOL_FIRST: true")
    torch.save({"model_state": slowfast_state(reference, split_qkv=True), "cfg": pool_first}, tmp_path / "pf.pyth")
    with pytest.raises(ValueError, match="POOL_FIRST is True"):
        create_model("mvit_micro_8x4", num_classes=CLASSES, checkpoint=tmp_path / "pf.pyth")


def test_classifier_of_another_size_is_reset_and_the_body_loads(files, clips):
    full = create_model("mvit_micro_8x4", num_classes=CLASSES, checkpoint=files["pytorchvideo-mvit"]).eval()
    model = create_model("mvit_micro_8x4", num_classes=3, checkpoint=files["pytorchvideo-mvit"]).eval()
    assert model.load_report.reset_head == ["head.weight", "head.bias"]
    assert model.load_report.file_classes == CLASSES
    with torch.no_grad():
        assert torch.equal(model.forward_features(clips), full.forward_features(clips))


def test_other_clip_length_and_image_size_resize_the_position_tables(files):
    """Weights of 8-frame 32 px clips fine-tune on 16 frames at 48 px: tables resized, everything else loaded."""
    source = read_weights(files["torchvision-mvit"])
    model = create_model("mvit_micro_8x4", num_classes=CLASSES, checkpoint=files["torchvision-mvit"], num_frames=16)
    assert model.pos_embed_temporal.shape[1] == 8
    temporal = source.state["pos_encoding.temporal_pos"]
    expected = torch.nn.functional.interpolate(temporal.T[None], size=8, mode="linear", align_corners=False)[0].T
    assert torch.allclose(model.pos_embed_temporal[0], expected)
    assert any("8-frame clips" in note for note in model.load_report.notes)
    wide = create_model("mvit_micro_8x4", num_classes=2, checkpoint=files["pyslowfast-mvit"], img_size=48)
    assert wide.pos_embed_spatial.shape[1] == 12 * 12
    with torch.no_grad():
        assert wide(torch.randn(1, 3, FRAMES, 48, 48)).shape == (1, 2)


def image_reference() -> MViT:
    """An image MViT as PySlowFast's ImageNet MVIT_B_16_CONV is built (2D patch, 1x3x3 pooling), at micro size."""
    model = MViT(
        spatial_size=(SIZE, SIZE),
        temporal_size=1,
        block_setting=micro_blocks([1, 3, 3], [1, 2, 2]),
        residual_pool=False,
        residual_with_cls_embed=True,
        rel_pos_embed=False,
        proj_after_attn=False,
        num_classes=CLASSES,
        patch_embed_kernel=(1, 7, 7),
        patch_embed_stride=(1, 4, 4),
        patch_embed_padding=(0, 3, 3),
    )
    return randomised(model, 2)


def test_image_mvit_loads_as_itself_and_inflates_to_video(tmp_path):
    """A PySlowFast image file (Conv2d patch, one joint position table) is a 1-frame MViT exactly, and starts a
    video MViT with its 2D kernels at the temporal centre."""
    reference = image_reference()
    state = slowfast_state(reference, split_qkv=False)
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"][:, :, 0]  # PATCH_2D: a Conv2d
    spatial, temporal = state.pop("pos_embed_spatial"), state.pop("pos_embed_temporal")
    state["pos_embed"] = torch.cat([state.pop("pos_embed_class"), spatial + temporal], dim=1)  # SEP_POS_EMBED false
    cfg = yaml.safe_load(slowfast_cfg(NUM_FRAMES=1, MEAN=[0.485, 0.456, 0.406], STD=[0.229, 0.224, 0.225]))
    cfg["MVIT"].update(PATCH_KERNEL=[7, 7], PATCH_STRIDE=[4, 4], PATCH_PADDING=[3, 3], POOL_KVQ_KERNEL=[1, 3, 3])
    path = tmp_path / "MVIT_B_16_CONV.pyth"
    torch.save({"model_state": state, "cfg": yaml.safe_dump(cfg)}, path)
    info = detect_layout(read_weights(path)).describe(read_weights(path))
    assert info.num_frames == 1 and info.frame_interval is None and info.mean == (0.485, 0.456, 0.406)
    assert info.model_args["patch_kernel"] == (1, 7, 7) and info.model_args["kernel_qkv"] == (1, 3, 3)
    image = create_model(
        info.suggested_model, num_classes=CLASSES, num_frames=1, img_size=SIZE, checkpoint=path, **info.model_args
    )
    assert max_difference(image, reference, torch.randn(2, 3, 1, SIZE, SIZE)) <= TOLERANCE
    video = create_model("mvit_micro_8x4", num_classes=CLASSES, checkpoint=path)
    patch = video.patch_embed.weight.detach()
    assert torch.equal(patch[:, :, 1], state["patch_embed.proj.weight"]) and not patch[:, :, [0, 2]].any()
    pool = video.blocks[1].attn.pool_q.conv.weight.detach()
    assert torch.equal(pool[:, :, 1], state["blocks.1.attn.pool_q.weight"][:, :, 0]) and not pool[:, :, [0, 2]].any()


def test_layouts_claim_only_their_own_files(files):
    """No MViT layout claims fovea's own files or the other families'; each file is claimed by one layout."""
    foreign = {
        name: {key: value for key, value in create_model(name, num_classes=3).state_dict().items()}
        for name in (
            "mvit_micro_8x4",
            "vivit_micro_fe",
            "timesformer_micro_divided",
            "cvt_micro_32",
            "vit_nano_patch4_16",
        )
    }
    from fovea.weights.base import WeightsSource

    for name, state in foreign.items():
        source = WeightsSource(path=files["torchvision-mvit"], state=state)
        assert not any(layout.detect(source) for layout in LAYOUTS), name
    for path in files.values():
        source = read_weights(path)
        assert sum(layout.detect(source) for layout in LAYOUTS) == 1
