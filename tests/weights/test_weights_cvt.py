"""CvT's published layouts load exactly: transformers' CvtForImageClassification and the authors' ``.pth`` files.

The references are built here with random weights at small sizes. transformers' CvT is the one we can run; the
authors' code (github:microsoft/CvT, ``lib/models/cls_cvt.py``) cannot be installed (it imports ``torch._six``), so
its files are written from the same weights under its own key names, and compared against transformers' model with
its MLP activation swapped for the authors' QuickGELU: with exact GELU, transformers runs the authors' weights
slightly differently from how they were trained.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from fovea.models import create_model
from fovea.sources import load_named_model
from fovea.weights import NATIVE, WeightsSource, detect_layout, read_weights
from fovea.weights.cvt import MICROSOFT, TRANSFORMERS

# transformers' CvtStage indexes its drop-path rates by the stage number, so stage i needs more than i layers
DEPTHS, DIMS, HEADS = [1, 2, 3], [16, 32, 48], [1, 2, 3]  # several heads: the attention scale matters
CLASSES = [f"class_{i}" for i in range(5)]
IMG = 64  # grids 16, 8, 4 through the published strides 4/2/2
ARCH = dict(depths=DEPTHS, embed_dims=DIMS, num_heads=HEADS)
TOLERANCE = 1e-4


class QuickGELU(nn.Module):
    """The authors' MLP activation (``cls_cvt.py``): ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _randomise(model: nn.Module) -> None:
    """Every tensor random (norm scales, BatchNorm statistics too), so a mixed-up key shows in the logits."""
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            if key.endswith("running_var"):
                value.uniform_(0.5, 1.5)
            else:
                value.normal_(0.0, 0.2 if value.dim() < 2 else 0.15)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """transformers' CvT with random weights, saved as a model folder with the hub's preprocessor file."""
    transformers = pytest.importorskip("transformers")
    config = transformers.CvtConfig(
        embed_dim=DIMS,
        num_heads=HEADS,
        depth=DEPTHS,
        num_labels=len(CLASSES),
        id2label=dict(enumerate(CLASSES)),
        label2id={name: i for i, name in enumerate(CLASSES)},
    )
    torch.manual_seed(0)
    model = transformers.CvtForImageClassification(config).eval()
    _randomise(model)
    folder = tmp_path_factory.mktemp("hf") / "cvt-13-tiny"
    model.save_pretrained(folder)
    # as transformers' conversion writes it (a ConvNext processor); statistics other than ImageNet's show they're read
    preprocessor = dict(
        image_processor_type="ConvNextImageProcessor",
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.25, 0.25],
        size={"shortest_edge": IMG},
        crop_pct=0.875,
    )
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    torch.manual_seed(1)
    x = torch.randn(2, 3, IMG, IMG)
    return model, folder, x, _logits(model, x)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model.eval()(x)
    return getattr(out, "logits", out)


def _fovea(path: Path, num_classes: int = len(CLASSES), **kwargs) -> nn.Module:
    return create_model("cvt_13_224", num_classes=num_classes, checkpoint=str(path), **{**ARCH, **kwargs})


def test_transformers_folder_gives_transformers_logits(reference):
    _, folder, x, expected = reference
    source = read_weights(folder)
    assert detect_layout(source).name == "transformers-cvt"
    info = TRANSFORMERS.describe(source)
    # the config's architecture, exact GELU as transformers runs it; the rest is the published CvT's
    assert info.suggested_model == "cvt_13_224"
    assert info.model_args == ARCH  # the authors' QuickGELU: transformers' GELU is asked for below
    assert (info.classes, info.img_size) == (CLASSES, IMG)

    model = _fovea(folder, act_layer="gelu")
    report = model.load_report
    assert (report.layout, report.reset_head, report.tensors) == ("transformers-cvt", [], len(model.state_dict()))
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) and model.pretrained_cfg["std"] == (0.25, 0.25, 0.25)
    diff = _max_diff(_logits(model, x), expected)
    print(f"transformers folder: max abs diff {diff:.2e}")
    assert diff <= TOLERANCE

    # fovea's earlier CvT (head-width scale) and the authors' activation each give other logits: the check can see
    for wrong in (dict(act_layer="gelu", attn_scale="head_dim"), dict(act_layer="quick_gelu")):
        assert _max_diff(_logits(_fovea(folder, **wrong), x), expected) > 10 * TOLERANCE


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_transformers_lone_file_loads(reference, kind, tmp_path):
    """A weights file without its config.json: the heads come from the user, the rest from the tensors."""
    hf, folder, x, expected = reference
    path = tmp_path / f"cvt.{kind}"
    if kind == "safetensors":
        shutil.copy(folder / "model.safetensors", path)
    else:
        torch.save(hf.state_dict(), path)  # what transformers writes as pytorch_model.bin
    source = read_weights(path)
    assert detect_layout(source).name == "transformers-cvt" and "config" not in source.meta
    info = TRANSFORMERS.describe(source)
    assert info.model_args == {"depths": DEPTHS, "embed_dims": DIMS}
    assert info.num_classes == len(CLASSES) and info.classes is None
    model = _fovea(path, act_layer="gelu")
    diff = _max_diff(_logits(model, x), expected)
    print(f"transformers .{kind}: max abs diff {diff:.2e}")
    assert diff <= TOLERANCE


# transformers' module path -> the authors' (cls_cvt.py: ``stage{i}`` VisionTransformer attributes patch_embed.proj
# and .norm, cls_token, blocks.{j}.norm1/attn/norm2/mlp; Attention's conv_proj_q = Sequential(conv, bn, rearrage),
# proj_q/k/v and proj; Mlp's fc1/fc2; the model's norm and head)
_ATTENTION = r"attention\.attention\."
_TO_AUTHORS = [
    (r"^cvt\.encoder\.stages\.(\d+)\.", r"stage\1."),
    (r"embedding\.convolution_embeddings\.projection\.", "patch_embed.proj."),
    (r"embedding\.convolution_embeddings\.normalization\.", "patch_embed.norm."),
    (r"layers\.(\d+)\.", r"blocks.\1."),
    *(
        (
            rf"{_ATTENTION}convolution_projection_{name}\.convolution_projection\.{theirs}\.",
            f"attn.conv_proj_{name[0]}.{ours}.",
        )
        for name in ("query", "key", "value")
        for theirs, ours in (("convolution", "conv"), ("normalization", "bn"))
    ),
    *((rf"{_ATTENTION}projection_{name}\.", f"attn.proj_{name[0]}.") for name in ("query", "key", "value")),
    (r"attention\.output\.dense\.", "attn.proj."),
    (r"intermediate\.dense\.", "mlp.fc1."),
    (r"output\.dense\.", "mlp.fc2."),
    (r"layernorm_before\.", "norm1."),
    (r"layernorm_after\.", "norm2."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]


def _authors_state(hf: nn.Module) -> dict[str, torch.Tensor]:
    state = {}
    for key, value in hf.state_dict().items():
        for pattern, replacement in _TO_AUTHORS:
            key = re.sub(pattern, replacement, key)
        state[key] = value.clone()
    return state


@pytest.fixture(scope="module")
def authors_file(reference, tmp_path_factory):
    """The reference's weights as the authors' model zoo stores them: a plain state dict in a ``.pth``."""
    hf, _, x, _ = reference
    state = _authors_state(hf)
    for key in (
        "stage0.patch_embed.proj.weight",
        "stage0.blocks.0.attn.conv_proj_q.bn.running_var",
        "stage1.blocks.1.attn.proj_v.bias",
        "stage2.cls_token",
        "stage2.blocks.2.mlp.fc2.weight",
        "norm.weight",
        "head.bias",
    ):
        assert key in state, key
    assert len(state) == len(hf.state_dict()) and not [k for k in state if k.startswith(("cvt.", "stages."))]
    path = tmp_path_factory.mktemp("ms") / "CvT-13-224x224-IN-1k.pth"
    torch.save(state, path)
    authors = _with_quick_gelu(hf)
    return path, _logits(authors, x)


def _with_quick_gelu(hf: nn.Module) -> nn.Module:
    model = copy.deepcopy(hf)
    for module in model.modules():
        if hasattr(module, "intermediate"):
            module.intermediate.activation = QuickGELU()
    return model.eval()


def test_authors_pth_gives_the_authors_logits(reference, authors_file):
    x = reference[2]
    path, expected = authors_file
    source = read_weights(path)
    assert detect_layout(source).name == "microsoft-cvt"
    info = MICROSOFT.describe(source)
    # the file records no heads: the user says them; QuickGELU and the dim scale are the preset's own
    assert info.model_args == {"depths": DEPTHS, "embed_dims": DIMS} and info.suggested_model == "cvt_13_224"
    assert info.img_size == 224 and info.num_classes == len(CLASSES) and info.classes is None
    model = _fovea(path)  # the preset's defaults: the authors' behaviour
    assert model.load_report.reset_head == [] and model.load_report.layout == "microsoft-cvt"
    diff = _max_diff(_logits(model, x), expected)
    print(f"authors .pth (QuickGELU): max abs diff {diff:.2e}")
    assert diff <= TOLERANCE
    assert _max_diff(_logits(_fovea(path, act_layer="gelu"), x), expected) > 10 * TOLERANCE
    assert _max_diff(_logits(_fovea(path, attn_scale="head_dim"), x), expected) > 10 * TOLERANCE


def test_authors_checkpoint_nested_under_state_dict_loads(reference, authors_file, tmp_path):
    """Their training checkpoints (lib/utils/utils.py) nest the weights under ``state_dict`` beside the optimizer."""
    x = reference[2]
    path, expected = authors_file
    nested = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": torch.load(path, weights_only=True), "epoch": 300}, nested)
    assert _max_diff(_logits(_fovea(nested), x), expected) <= TOLERANCE


def test_classifier_of_another_size_is_reset_and_the_body_loads(reference, authors_file):
    hf, folder, x, _ = reference
    with torch.no_grad():
        out = hf.cvt(x)
        features = hf.layernorm(out.cls_token_value)[:, 0]  # what transformers' classifier reads
    for path, args in ((folder, dict(act_layer="gelu")), (authors_file[0], {})):
        model = _fovea(path, num_classes=3, **args).eval()
        report = model.load_report
        assert sorted(report.reset_head) == ["head.bias", "head.weight"] and report.file_classes == len(CLASSES)
        assert any("classifier reset to 3 classes" in line for line in report.lines())
        if args:
            with torch.no_grad():
                diff = _max_diff(model.forward_head(model.forward_features(x), pre_logits=True), features)
            assert diff <= TOLERANCE


def _rewritten(path: Path, tmp_path: Path, drop: str, rename: tuple[str, str] | None) -> Path:
    source = read_weights(path)
    state = {k: v for k, v in source.state.items() if k != drop}
    if rename:
        state[rename[1]] = state.pop(rename[0])
    out = tmp_path / f"broken{path.suffix or '.safetensors'}"
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, out)
    else:
        torch.save(state, out)
    return out


_HF_BLOCK = "cvt.encoder.stages.1.layers.0."


@pytest.mark.parametrize(
    ("which", "drop", "rename", "named"),
    [
        ("authors", "stage1.blocks.0.attn.proj_k.bias", None, r"missing stages\.1\.blocks\.0\.attn\.proj_k\.bias"),
        (
            "authors",
            "",
            ("stage2.blocks.1.mlp.fc1.weight", "stage2.blocks.1.mlp.fc_1.weight"),
            r"missing stages\.2\.blocks\.1\.mlp\.fc1\.weight; unexpected stages\.2\.blocks\.1\.mlp\.fc_1\.weight",
        ),
        ("transformers", _HF_BLOCK + "layernorm_after.weight", None, r"missing stages\.1\.blocks\.0\.norm2\.weight"),
        (
            "transformers",
            "",
            (_HF_BLOCK + "attention.output.dense.bias", _HF_BLOCK + "attention.out.dense.bias"),
            r"missing stages\.1\.blocks\.0\.attn\.proj\.bias; unexpected " + re.escape(_HF_BLOCK + "attention.out"),
        ),
    ],
)
def test_partial_or_renamed_file_fails_in_one_line_naming_the_keys(
    reference, authors_file, tmp_path, which, drop, rename, named
):
    path = authors_file[0] if which == "authors" else reference[1] / "model.safetensors"
    broken = _rewritten(path, tmp_path, drop, rename)
    with pytest.raises(ValueError, match=named) as caught:
        _fovea(broken, act_layer="gelu")
    assert "\n" not in str(caught.value)


def test_cvt_files_are_refused_by_other_families(authors_file):
    with pytest.raises(ValueError, match=r"holds microsoft-cvt weights \(cvt\)"):
        create_model("vit_micro_patch4_32", num_classes=5, checkpoint=str(authors_file[0]))


def _meta_state(name: str, **kwargs) -> dict[str, torch.Tensor]:
    with torch.device("meta"):  # shapes only: the published sizes cost nothing
        return timm.create_model(name, **kwargs).state_dict()


def _as_authors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {re.sub(r"^stages\.(\d+)\.", r"stage\1.", k): v for k, v in state.items()}


@pytest.mark.parametrize(
    ("name", "file_name", "suggested", "img_size"),
    [
        ("cvt_13_224", "CvT-13-224x224-IN-1k.pth", "cvt_13_224", 224),
        ("cvt_21_384", "CvT-21-384x384-IN-22k.pth", "cvt_21_384", 384),
        ("cvt_w24_384", "weights.pth", "cvt_w24_384", 384),  # W24 was released at 384 only
        ("cvt_13_224", "weights.pth", "cvt_13_224", None),
    ],
)
def test_published_authors_files_describe_themselves(name, file_name, suggested, img_size):
    state = _as_authors(_meta_state(name, num_classes=1000))
    source = WeightsSource(Path(file_name), state)
    assert detect_layout(source) is MICROSOFT
    info = MICROSOFT.describe(source)
    assert (info.suggested_model, info.model_args, info.img_size) == (suggested, {}, img_size)
    assert info.num_classes == 1000 and info.classes[0] == "tench, Tinca tinca"  # ImageNet-1k, sorted synsets
    assert info.mean == timm.data.IMAGENET_DEFAULT_MEAN and info.std == timm.data.IMAGENET_DEFAULT_STD
    width = state["head.weight"].shape[1]
    head = {"head.weight": torch.empty(21841, width, device="meta"), "head.bias": torch.empty(21841, device="meta")}
    pretrained = MICROSOFT.describe(WeightsSource(Path(file_name), {**state, **head}))  # ImageNet-22k's head
    assert pretrained.num_classes == 21841 and pretrained.classes is None


def test_detection_claims_only_its_own_layout(reference, authors_file):
    fovea_own = WeightsSource(Path("w.pt"), _meta_state("cvt_micro_32", num_classes=8))
    assert detect_layout(fovea_own) is NATIVE
    others = (
        "vit_micro_patch4_32",
        "deit_micro_distilled_patch4_32",
        "swin_micro_patch2_window4_32",
        "mvit_micro_8x4",
        "timesformer_micro_divided",
        "vivit_micro_fe",
        "c3d_micro",
    )
    for other in others:
        source = WeightsSource(Path("w.pt"), _meta_state(other, num_classes=8))
        assert (MICROSOFT.detect(source), TRANSFORMERS.detect(source)) == (False, False), other
    hf_source = read_weights(reference[1])
    ms_source = read_weights(authors_file[0])
    assert (MICROSOFT.detect(hf_source), TRANSFORMERS.detect(ms_source)) == (False, False)
    # transformers' CvtModel (no classifier) keeps the ``encoder.`` keys without ``cvt.``
    base = WeightsSource(Path("w.safetensors"), {k.removeprefix("cvt."): v for k, v in hf_source.state.items()})
    assert detect_layout(base) is TRANSFORMERS


def test_unsupported_transformers_configs_say_why(reference):
    source = read_weights(reference[1])
    for change, message in (
        ({"qkv_projection_method": ["avg", "avg", "avg"]}, "only 'dw_bn'"),
        ({"stride_q": [1, 1, 2]}, "keeps every query"),
        ({"qkv_bias": [True, False, True]}, "one setting for all stages"),
    ):
        config = {**source.meta["config"], **change}
        with pytest.raises(ValueError, match=message):
            TRANSFORMERS.describe(WeightsSource(source.path, source.state, {**source.meta, "config": config}))


def test_a_model_by_name_takes_its_class_count_from_a_published_file(tmp_path):
    """``load_named_model`` with ``num_classes=0`` (a distillation teacher given by name and file) reads the head's
    size through the file's layout: transformers calls the classifier ``classifier``, not ``head``."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.CvtForImageClassification(transformers.CvtConfig(num_labels=5)).eval()  # CvT-13's shape
    hf.save_pretrained(tmp_path / "cvt-13")
    loaded = load_named_model("cvt_13_224", num_classes=0, img_size=224, checkpoint=str(tmp_path / "cvt-13"))
    # the file's classifier itself, loaded (the logits differ from transformers' by its exact GELU: the preset runs
    # the authors' QuickGELU, as test_transformers_folder_gives_transformers_logits shows)
    assert torch.equal(loaded.module.head.weight, hf.classifier.weight)
    assert _logits(loaded.module, torch.randn(1, 3, 224, 224)).shape == (1, 5)
