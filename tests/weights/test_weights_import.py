"""``fovea weights inspect`` and ``import``: a file described without building a model, converted once into a model
folder and a registered version (alias base) that ``model.checkpoint=models:/NAME@base`` starts from."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import mlflow_store
from mlflow.tracking import MlflowClient

from fovea.cli import main
from fovea.config import ConfigError, build_config
from fovea.models import create_model
from fovea.sources import start_weights_path
from fovea.train.checks import check_before_start, check_start_weights, check_teacher_spec
from fovea.weights import file_sha256, inspect_weights, load_weights

MODEL = "vit_micro_patch4_32"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A 7-class micro ViT's weights (random, seeded), as a plain state dict file."""
    torch.manual_seed(0)
    model = create_model(MODEL, num_classes=7).eval()
    path = tmp_path_factory.mktemp("weights") / "vit7.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_inspect_describes_a_file_without_building_a_model(weights, capsys):
    _, path = weights
    found = inspect_weights(path)
    assert found["layout"] == "fovea" and found["num_classes"] == 7 and found["tensors"] == len(torch.load(path))
    assert found["parameters"] == sum(p.numel() for p in weights[0].parameters())
    assert found["sha256"] == file_sha256(path) and len(found["sha256"]) == 64
    assert main(["weights", "inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_classes"] == 7
    assert main(["weights", "inspect", str(path)]) == 0
    assert "layout       fovea" in capsys.readouterr().out


def test_a_wrong_or_damaged_file_is_one_line_exit_2(weights, tmp_path, capsys):
    _, path = weights
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[:5000])
    assert main(["weights", "inspect", str(cut)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("fovea: error: ") and str(cut) in error and error.count("\n") == 1
    state = torch.load(path)
    state["blocks.9.extra.weight"] = torch.zeros(3)
    del state["blocks.0.attn.qkv.weight"]
    partial = tmp_path / "partial.pth"
    torch.save(state, partial)
    with pytest.raises(ValueError, match=r"missing blocks\.0\.attn\.qkv\.weight; unexpected blocks\.9\.extra\.weight"):
        load_weights(create_model(MODEL, num_classes=7), partial)
    assert main(["weights", "import", str(partial), "--model", MODEL, "--register", "x", "--tracking-uri",
                 mlflow_store(tmp_path)]) == 2  # fmt: skip
    assert "missing blocks.0.attn.qkv.weight" in capsys.readouterr().err


def test_import_registers_a_version_that_fine_tuning_starts_from(weights, tmp_path, capsys, monkeypatch):
    model, path = weights
    uri = mlflow_store(tmp_path)
    out = tmp_path / "folder"
    code = main(["weights", "import", str(path), "--model", MODEL, "--register", "vit-base", "--tracking-uri", uri,
                 "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "registered vit-base version 1 (@base)" in printed
    assert "model.checkpoint=models:/vit-base@base" in printed
    assert (out / "weights.pt").is_file() and json.loads((out / "fovea_model.json").read_text())["model_name"] == MODEL

    from fovea.distill import load_teacher

    teacher = load_teacher(str(out), num_classes=7, img_size=32)  # the folder teaches as it is: its own head
    with torch.no_grad():
        assert torch.allclose(teacher.model(torch.ones(1, 3, 32, 32)), model(torch.ones(1, 3, 32, 32)), atol=1e-6)
    check_teacher_spec(build_config([{"distill": {"type": "soft", "teacher": str(out)}}]))

    version = MlflowClient(uri).get_model_version_by_alias("vit-base", "base")
    assert version.tags["source_sha256"] == file_sha256(path) and version.tags["source_layout"] == "fovea"
    assert version.tags["num_classes"] == "7"

    # the registered copy is what a fine-tuning run downloads, once per node, and starts from
    local = start_weights_path("models:/vit-base@base", uri)
    assert local.name == "v1" and (local / "weights.pt").is_file()
    import fovea.track

    def no_second_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(fovea.track, "download_registered_model", no_second_download)
    assert start_weights_path("vit-base@base", uri) == local  # this node's copy, found by the resolved version
    fresh = create_model(MODEL, num_classes=3, checkpoint=str(local))
    assert fresh.load_report.reset_head == ["head.weight", "head.bias"]
    assert any("classifier reset to 3 classes" in line for line in fresh.load_report.lines())
    assert torch.equal(fresh.state_dict()["blocks.0.attn.qkv.weight"], model.state_dict()["blocks.0.attn.qkv.weight"])

    cfg = build_config([{"model": {"name": MODEL, "img_size": 32, "checkpoint": "models:/vit-base@base"},
                         "track": {"uri": uri}}])  # fmt: skip
    assert check_start_weights(cfg, num_classes=3).reset_head == ["head.weight", "head.bias"]
    missing = build_config([{"model": {"name": MODEL, "checkpoint": "models:/vit-base@nope"}, "track": {"uri": uri}}])
    with pytest.raises(ConfigError, match=r"model.checkpoint: models:/vit-base@nope not found"):
        check_start_weights(missing)


def test_pretrained_fovea_presets_fetch_their_published_source_or_refuse(monkeypatch):
    import huggingface_hub

    from fovea.weights.hub import published_source

    assert published_source("cvt_13_224") == "hf:microsoft/cvt-13"
    assert published_source("mvit_base_16x4").startswith("https://download.pytorch.org/models/mvit_v1_b-")
    with pytest.raises(ValueError, match="no published weights are known for vivit_micro_fe"):
        create_model("vivit_micro_fe", num_classes=3, pretrained=True)
    with pytest.raises(ConfigError, match="model.pretrained: no published weights are known for cvt_micro_32"):
        check_before_start(build_config([{"model": {"name": "cvt_micro_32", "pretrained": True}}]))

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(
        RuntimeError, match=r"could not fetch published weights for cvt_13_224 from hf:microsoft/cvt-13"
    ):
        create_model("cvt_13_224", num_classes=3, pretrained=True)
