"""TimeSformer's published files load through ``create_model(..., checkpoint=...)`` and give the reference's logits.

References, at the smallest sizes both sides allow (16 px frames in 4 px patches, 4 frames, width 32, 2 blocks):

- transformers' ``TimesformerForVideoClassification`` (divided, joint, space-only): a ``save_pretrained`` folder,
  its lone ``model.safetensors``, and a lone ``pytorch_model.bin``.
- the paper's repository (facebookresearch/TimeSformer), which cannot be installed here: the same transformers
  weights written in its ``.pyth`` layout (the module names of ``timesformer/models/vit.py`` under the wrapper's
  ``model.``, a ``Conv2d`` patch kernel, ``{"model_state", "optimizer_state", "cfg", "epoch"}``). transformers'
  space-only model leaves the frames unpooled (one row of logits per frame), so the space-only reference is the
  paper's pooling (``vit.py`` ``forward_features``: every token averaged over the frames, then the norm, then the
  CLS) computed here from transformers' encoder output.
"""

from __future__ import annotations

import re
import shutil

import pytest
import torch
import yaml

from fovea.models import create_model
from fovea.weights import WeightsSource, detect_layout, read_weights

SIZE, PATCH, FRAMES, WIDTH, HEADS, DEPTH, CLASSES = 16, 4, 4, 32, 2, 2, 5
# fovea's arguments for that architecture (mlp_ratio 2: transformers' intermediate_size 64)
ARCH = dict(img_size=SIZE, patch_size=PATCH, num_frames=FRAMES, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS)
ARCH_MLP = {**ARCH, "mlp_ratio": 2.0}
HF_ATTENTION = {"divided": "divided_space_time", "joint": "joint_space_time", "space": "space_only"}
LABELS = [f"action {i}" for i in range(CLASSES)]
TOLERANCE = 1e-4

# the paper repository's names (timesformer/models/vit.py) for transformers' (modeling_timesformer.py)
_ORIGINAL_TOP = {
    "timesformer.embeddings.cls_token": "cls_token",
    "timesformer.embeddings.position_embeddings": "pos_embed",
    "timesformer.embeddings.time_embeddings": "time_embed",
    "timesformer.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "timesformer.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "timesformer.layernorm.weight": "norm.weight",
    "timesformer.layernorm.bias": "norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}
_ORIGINAL_BLOCK = {
    "layernorm_before": "norm1",
    "attention.attention.qkv": "attn.qkv",
    "attention.output.dense": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "temporal_layernorm": "temporal_norm1",
    "temporal_attention.attention.qkv": "temporal_attn.qkv",
    "temporal_attention.output.dense": "temporal_attn.proj",
    "temporal_dense": "temporal_fc",
}


def _randomise(model: torch.nn.Module) -> None:
    """Every parameter random (transformers starts the time embedding and LayerNorms at constants)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                centre = 1.0 if isinstance(module, torch.nn.LayerNorm) and name == "weight" else 0.0
                param.copy_(centre + 0.2 * torch.randn_like(param))


@pytest.fixture(scope="module")
def reference():
    """One random transformers TimeSformer per attention scheme, in eval mode: ``reference(attention)``."""
    transformers = pytest.importorskip("transformers")
    built: dict[tuple[str, int], torch.nn.Module] = {}

    def build(attention: str, frames: int = FRAMES) -> torch.nn.Module:
        if (attention, frames) not in built:
            config = transformers.TimesformerConfig(
                image_size=SIZE,
                patch_size=PATCH,
                num_frames=frames,
                hidden_size=WIDTH,
                num_hidden_layers=DEPTH,
                num_attention_heads=HEADS,
                intermediate_size=2 * WIDTH,
                attention_type=HF_ATTENTION[attention],
                id2label=dict(enumerate(LABELS)),
                label2id={label: i for i, label in enumerate(LABELS)},
            )
            model = transformers.TimesformerForVideoClassification(config).eval()
            _randomise(model)
            built[attention, frames] = model
        return built[attention, frames]

    return build


@pytest.fixture(scope="module")
def clips():
    torch.manual_seed(1)
    return torch.randn(2, 3, FRAMES, SIZE, SIZE)  # fovea's (B, C, T, H, W)


def _reference_logits(model: torch.nn.Module, clips: torch.Tensor) -> torch.Tensor:
    pixels = clips.transpose(1, 2)  # transformers takes (B, T, C, H, W)
    with torch.no_grad():
        if model.config.attention_type != "space_only":
            return model(pixel_values=pixels).logits
        # the paper's space-only pooling from transformers' encoder output (before its final norm), per frame
        hidden = model.timesformer(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
        frames = hidden.reshape(clips.shape[0], clips.shape[2], *hidden.shape[1:]).mean(dim=1)
        return model.classifier(model.timesformer.layernorm(frames)[:, 0])


def _max_diff(model: torch.nn.Module, reference: torch.nn.Module, clips: torch.Tensor) -> float:
    with torch.no_grad():
        ours = model.eval()(clips)
    return float((ours - _reference_logits(reference, clips)).abs().max())


def _original_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A transformers TimeSformer's weights under the paper repository's keys."""
    state = {}
    for key, value in model.state_dict().items():
        found = re.fullmatch(r"timesformer\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", key)
        name = f"blocks.{found[1]}.{_ORIGINAL_BLOCK[found[2]]}.{found[3]}" if found else _ORIGINAL_TOP[key]
        state[f"model.{name}"] = value.clone()  # the Conv2d patch kernel stays 4-D, as vit.py's PatchEmbed has it
    return state


def _original_cfg(attention: str, frames: int = FRAMES, dataset: str = "kinetics") -> str:
    """The YAML the repository's ``save_checkpoint`` stores (``cfg.dump()``), cut to the sections that matter."""
    cfg = {
        "TRAIN": {"ENABLE": True, "DATASET": dataset, "BATCH_SIZE": 8},
        "DATA": {
            "NUM_FRAMES": frames,
            "SAMPLING_RATE": 32,
            "TRAIN_JITTER_SCALES": [256, 320],
            "TRAIN_CROP_SIZE": SIZE,
            "TEST_CROP_SIZE": SIZE,
            "MEAN": [0.45, 0.45, 0.45],
            "STD": [0.225, 0.225, 0.225],
        },
        "TIMESFORMER": {"ATTENTION_TYPE": HF_ATTENTION[attention], "PRETRAINED_MODEL": ""},
        "MODEL": {"MODEL_NAME": "vit_base_patch16_224", "NUM_CLASSES": CLASSES, "ARCH": "vit"},
    }
    return yaml.safe_dump(cfg)


def _save_original(path, state: dict[str, torch.Tensor], cfg: str | None) -> None:
    checkpoint = {"epoch": 15, "model_state": state, "optimizer_state": {"state": {}, "param_groups": []}}
    if cfg is not None:
        checkpoint["cfg"] = cfg
    torch.save(checkpoint, path)


def _fovea_original_file(tmp_path, attention: str = "divided", **kwargs):
    """A paper-layout ``.pyth`` from a random fovea model (for the checks that need no transformers)."""
    torch.manual_seed(2)
    model = create_model(f"timesformer_base_8x224_{attention}", num_classes=CLASSES, **ARCH, **kwargs)
    state = {}
    for key, value in model.state_dict().items():
        state[f"model.{key}"] = value[:, :, 0] if key == "patch_embed.proj.weight" else value
    path = tmp_path / f"TimeSformer_{attention}.pyth"
    _save_original(path, state, _original_cfg(attention))
    return model, path


@pytest.mark.parametrize("attention", ["divided", "joint", "space"])
def test_transformers_folder_gives_the_reference_logits(tmp_path, reference, clips, attention):
    hf = reference(attention)
    folder = tmp_path / f"timesformer-{attention}"
    hf.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text('{"image_mean": [0.45, 0.45, 0.45], "image_std": [0.2, 0.2, 0.2]}')
    source = read_weights(folder)
    layout = detect_layout(source)
    assert layout.name == "transformers-timesformer"
    info = layout.describe(source)
    assert (info.num_frames, info.img_size, info.classes) == (FRAMES, SIZE, LABELS)
    assert info.suggested_model == f"timesformer_base_8x224_{attention}"
    expected = {"attention": attention, "embed_dim": WIDTH, "depth": DEPTH, "num_heads": HEADS, "patch_size": PATCH}
    expected.update(mlp_ratio=2.0, **({"space_variant": "paper"} if attention == "space" else {}))
    assert info.model_args == expected

    sizes = dict(img_size=info.img_size, num_frames=info.num_frames)
    model = create_model(info.suggested_model, num_classes=CLASSES, checkpoint=folder, **sizes, **info.model_args)
    assert model.load_report.reset_head == []
    assert model.pretrained_cfg["std"] == (0.2, 0.2, 0.2)  # the file's normalisation is the model's
    diff = _max_diff(model, hf, clips)
    print(f"transformers folder {attention}: max abs diff {diff:.2e}")
    assert diff <= TOLERANCE


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_lone_transformers_file_loads_from_its_keys_alone(tmp_path, reference, clips, kind):
    hf = reference("divided")
    alone = tmp_path / "alone"
    alone.mkdir()
    if kind == "safetensors":
        hf.save_pretrained(tmp_path / "folder")
        path = shutil.copy(tmp_path / "folder" / "model.safetensors", alone / "model.safetensors")
    else:
        path = alone / "pytorch_model.bin"
        torch.save(hf.state_dict(), path)
    source = read_weights(path)
    layout = detect_layout(source)
    assert layout.name == "transformers-timesformer"
    info = layout.describe(source)
    # without config.json: the clip from the time embedding, the scheme from the temporal layers, no class names
    assert (info.num_frames, info.img_size, info.num_classes, info.classes) == (FRAMES, SIZE, CLASSES, None)
    assert info.model_args["attention"] == "divided" and "num_heads" not in info.model_args
    assert info.mean == (0.45, 0.45, 0.45) and info.std == (0.225, 0.225, 0.225)
    model = create_model("timesformer_base_8x224_divided", num_classes=CLASSES, checkpoint=path, **ARCH_MLP)
    diff = _max_diff(model, hf, clips)
    print(f"lone transformers {kind}: max abs diff {diff:.2e}")
    assert diff <= TOLERANCE


@pytest.mark.parametrize("attention", ["divided", "joint", "space"])
def test_facebookresearch_pyth_gives_the_reference_logits(tmp_path, reference, clips, attention):
    hf = reference(attention)
    path = tmp_path / f"TimeSformer_{attention}_{FRAMES}x32_{SIZE}.pyth"
    _save_original(path, _original_state(hf), _original_cfg(attention))
    source = read_weights(path)
    layout = detect_layout(source)
    assert layout.name == "facebookresearch-timesformer"  # the space-only file by its cfg: its keys are a ViT's
    info = layout.describe(source)
    assert (info.num_frames, info.frame_interval, info.img_size, info.num_classes) == (FRAMES, 32, SIZE, CLASSES)
    assert (info.mean, info.std) == ((0.45,) * 3, (0.225,) * 3)
    assert info.model_args["attention"] == attention
    # an SSv2 cfg: its loader takes one frame per segment, so SAMPLING_RATE says nothing
    ssv2 = WeightsSource(path=path, state=source.state, meta={"cfg": _original_cfg(attention, dataset="ssv2")})
    assert layout.describe(ssv2).frame_interval is None

    model = create_model(f"timesformer_base_8x224_{attention}", num_classes=CLASSES, checkpoint=str(path), **ARCH_MLP)
    assert model.load_report.layout == "facebookresearch-timesformer" and model.load_report.reset_head == []
    diff = _max_diff(model, hf, clips)
    print(f"facebookresearch .pyth {attention}: max abs diff {diff:.2e}")
    assert diff <= TOLERANCE
    if attention == "space":  # the paper's space-only model has no time embedding
        assert model.time_embed is None
    else:  # the time embedding and temporal layers are the file's, not an image ViT's zeros
        assert torch.equal(model.time_embed, hf.timesformer.embeddings.time_embeddings)
    if attention == "divided":
        block = hf.timesformer.encoder.layer[1]
        assert torch.equal(model.blocks[1].temporal_fc.weight, block.temporal_dense.weight)


def test_paper_file_with_its_prefix_stripped_is_not_taken_for_an_image_vit(tmp_path, reference, clips):
    """The defect: once ``model.`` is gone, a 4-D patch kernel alone made the filter inflate it as a 2D ViT,
    zeroing the time embedding and every ``temporal_fc``."""
    hf = reference("divided")
    state = {key.removeprefix("model."): value for key, value in _original_state(hf).items()}
    path = tmp_path / "stripped.pth"
    torch.save(state, path)
    assert detect_layout(read_weights(path)).name == "fovea"
    model = create_model("timesformer_base_8x224_divided", num_classes=CLASSES, checkpoint=path, **ARCH_MLP)
    assert model.time_embed.abs().sum() > 0 and model.blocks[0].temporal_fc.weight.abs().sum() > 0
    assert _max_diff(model, hf, clips) <= TOLERANCE


def test_another_clip_length_takes_the_time_embedding_resized_as_the_paper_code_does(reference, tmp_path):
    """Joint attention at 2 frames from a 4-frame file: transformers (and the paper's code) resize the time
    embedding nearest-neighbour at run time, fovea once when it loads the file."""
    hf = reference("joint")
    hf.save_pretrained(tmp_path / "joint")
    short_clips = {**ARCH_MLP, "num_frames": 2}
    model = create_model(
        "timesformer_base_8x224_joint", num_classes=CLASSES, checkpoint=tmp_path / "joint", **short_clips
    )
    assert any("4-frame clips" in note for note in model.load_report.notes)
    torch.manual_seed(3)
    short = torch.randn(2, 3, 2, SIZE, SIZE)
    diff = _max_diff(model, hf, short)
    print(f"joint, 4-frame file at 2 frames: max abs diff {diff:.2e}")
    assert diff <= TOLERANCE


def test_fine_tuning_at_other_sizes_resizes_both_position_tables(tmp_path):
    original, path = _fovea_original_file(tmp_path)
    model = create_model(
        "timesformer_base_8x224_divided", num_classes=3, checkpoint=path, **{**ARCH, "img_size": 24, "num_frames": 8}
    )
    assert model.pos_embed.shape == (1, 1 + 36, WIDTH)
    assert torch.equal(model.pos_embed[:, :1], original.pos_embed[:, :1])  # the CLS position is kept
    assert torch.equal(model.time_embed, original.time_embed.repeat_interleave(2, dim=1))
    assert model.load_report.reset_head == ["head.weight", "head.bias"]
    assert model(torch.randn(1, 3, 8, 24, 24)).shape == (1, 3)


def test_a_classifier_of_another_size_is_reset_and_the_body_loads(tmp_path):
    original, path = _fovea_original_file(tmp_path)
    model = create_model("timesformer_base_8x224_divided", num_classes=CLASSES + 2, checkpoint=path, **ARCH)
    report = model.load_report
    assert report.reset_head == ["head.weight", "head.bias"] and report.file_classes == CLASSES
    assert any("classifier reset" in line for line in report.lines())
    assert torch.equal(model.blocks[1].temporal_fc.weight, original.blocks[1].temporal_fc.weight)
    assert torch.equal(model.time_embed, original.time_embed)
    assert model.head.weight.shape == (CLASSES + 2, WIDTH)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ("remove", r"missing blocks\.1\.temporal_fc\.bias"),
        ("rename", r"missing norm\.weight; unexpected norm\.gamma"),
    ],
)
def test_a_partial_or_misnamed_file_fails_in_one_line_naming_the_keys(tmp_path, edit, named):
    _, path = _fovea_original_file(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    state = checkpoint["model_state"]
    if edit == "remove":
        del state["model.blocks.1.temporal_fc.bias"]
    else:
        state["model.norm.gamma"] = state.pop("model.norm.weight")
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=named) as caught:
        create_model("timesformer_base_8x224_divided", num_classes=CLASSES, checkpoint=path, **ARCH)
    assert "\n" not in str(caught.value) and "facebookresearch-timesformer" in str(caught.value)


def test_a_scheme_or_variant_the_weights_do_not_have_is_refused(tmp_path):
    _, divided = _fovea_original_file(tmp_path)
    with pytest.raises(ValueError, match=r"unexpected blocks\.0\.temporal"):
        create_model("timesformer_base_8x224_joint", num_classes=CLASSES, checkpoint=divided, **ARCH)
    # the paper's space-only model has no time embedding; fovea's frame-order aware variant needs one
    _, space = _fovea_original_file(tmp_path, "space")
    with pytest.raises(ValueError, match="missing time_embed"):
        create_model(
            "timesformer_base_8x224_space", num_classes=CLASSES, checkpoint=space, **ARCH, space_variant="timed"
        )


def test_the_layouts_claim_only_timesformer_files(tmp_path, vit_file):
    # fovea's own files and timm's 2D ViTs are no published layout
    model = create_model("timesformer_micro_divided", num_classes=3)
    torch.save(model.state_dict(), tmp_path / "fovea.pth")
    assert detect_layout(read_weights(tmp_path / "fovea.pth")).name == "fovea"
    assert detect_layout(read_weights(vit_file[1])).name == "fovea"
    # a space-only paper file without its cfg is a ViT under ``model.``: nothing in it says TimeSformer
    _, space = _fovea_original_file(tmp_path, "space")
    checkpoint = torch.load(space, weights_only=True)
    _save_original(tmp_path / "no_cfg.pyth", checkpoint["model_state"], None)
    assert detect_layout(read_weights(tmp_path / "no_cfg.pyth")).name != "facebookresearch-timesformer"
    # without the cfg a divided file still is one (its keys are), and its clip comes from the time embedding
    _, divided = _fovea_original_file(tmp_path)
    checkpoint = torch.load(divided, weights_only=True)
    _save_original(tmp_path / "divided_no_cfg.pyth", checkpoint["model_state"], None)
    source = read_weights(tmp_path / "divided_no_cfg.pyth")
    layout = detect_layout(source)
    assert layout.name == "facebookresearch-timesformer"
    info = layout.describe(source)
    assert (info.num_frames, info.img_size, info.model_args["attention"], info.frame_interval) == (
        FRAMES,
        SIZE,
        "divided",
        None,
    )


def test_transformers_vivit_is_not_taken_for_a_timesformer(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.VivitConfig(
        image_size=SIZE, num_frames=FRAMES, tubelet_size=[2, PATCH, PATCH], hidden_size=WIDTH, num_hidden_layers=1,
        num_attention_heads=HEADS, intermediate_size=2 * WIDTH, num_labels=CLASSES,
    )  # fmt: skip
    transformers.VivitForVideoClassification(config).save_pretrained(tmp_path / "vivit")
    layout = detect_layout(read_weights(tmp_path / "vivit"))
    assert layout.family != "timesformer"
