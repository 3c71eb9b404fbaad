"""DeiT distillation: loss values against hand computation, the frozen teacher, two-head evaluation, teachers
from checkpoint files and from a real MLflow registry."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import mlflow_store
from torch import nn

from fovea.config import ConfigError, build_config
from fovea.distill import (
    DistillationLoss,
    Teacher,
    check_teacher,
    head_logits,
    load_teacher,
    teacher_kind,
    use_distillation_token,
)
from fovea.models import create_model
from fovea.refs import parse_registry_uri
from fovea.train.checks import check_before_start
from fovea.train.loop import Normalize, evaluate, train_one_epoch

CLASSES = ["a", "b", "c", "d", "e"]


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def _ce(logits: torch.Tensor, target: int, smoothing: float = 0.0) -> float:
    """Cross-entropy of one sample, written out: -Σ_c q_c log p_c with q the smoothed one-hot."""
    probs = _softmax(logits.tolist())
    classes = len(probs)
    q = [smoothing / classes + (1 - smoothing) * (c == target) for c in range(classes)]
    return -sum(qc * math.log(pc) for qc, pc in zip(q, probs, strict=True))


def _kl(teacher: torch.Tensor, student: torch.Tensor, tau: float) -> float:
    """KL(softmax(t/τ) ‖ softmax(s/τ)) of one sample."""
    p_t = _softmax((teacher / tau).tolist())
    p_s = _softmax((student / tau).tolist())
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_t, p_s, strict=True))


@pytest.fixture
def logits():
    generator = torch.Generator().manual_seed(3)
    batch, classes = 6, 5
    return {
        "cls": torch.randn(batch, classes, generator=generator, dtype=torch.float64) * 2,
        "dist": torch.randn(batch, classes, generator=generator, dtype=torch.float64) * 2,
        "teacher": torch.randn(batch, classes, generator=generator, dtype=torch.float64) * 3,
        "targets": torch.randint(0, classes, (batch,), generator=generator),
    }


@pytest.mark.parametrize("reduction", ["batchmean", "legacy"])
def test_soft_loss_matches_the_formula(logits, reduction):
    alpha, tau, smoothing = 0.3, 2.5, 0.1
    loss_fn = DistillationLoss("soft", alpha=alpha, tau=tau, kl_reduction=reduction, label_smoothing=smoothing)
    got = loss_fn((logits["cls"], logits["dist"]), logits["targets"], logits["teacher"]).item()

    batch, classes = logits["cls"].shape
    label = sum(_ce(logits["cls"][i], int(logits["targets"][i]), smoothing) for i in range(batch)) / batch
    kl_sum = sum(_kl(logits["teacher"][i], logits["dist"][i], tau) for i in range(batch))
    # batchmean: the per-sample KL; legacy (DeiT's code): the summed KL over batch x classes
    kl = kl_sum / batch if reduction == "batchmean" else kl_sum / (batch * classes)
    expected = (1 - alpha) * label + alpha * tau**2 * kl
    assert got == pytest.approx(expected, rel=1e-6)


def test_legacy_reduction_is_the_batchmean_divided_by_the_classes(logits):
    args = (logits["dist"], logits["targets"], logits["teacher"])
    batchmean = DistillationLoss("soft", alpha=1.0, tau=3.0).forward(*args)
    legacy = DistillationLoss("soft", alpha=1.0, tau=3.0, kl_reduction="legacy").forward(*args)
    assert legacy.item() == pytest.approx(batchmean.item() / logits["dist"].shape[1], rel=1e-9)


def test_hard_loss_matches_the_formula(logits):
    alpha, smoothing = 0.7, 0.2
    loss_fn = DistillationLoss("hard", alpha=alpha, tau=4.0, label_smoothing=smoothing)  # τ has no effect on hard
    got = loss_fn((logits["cls"], logits["dist"]), logits["targets"], logits["teacher"]).item()
    batch = logits["cls"].shape[0]
    teacher_labels = [int(torch.argmax(row)) for row in logits["teacher"]]
    label = sum(_ce(logits["cls"][i], int(logits["targets"][i]), smoothing) for i in range(batch)) / batch
    # the teacher term takes the teacher's argmax without label smoothing
    teacher_term = sum(_ce(logits["dist"][i], teacher_labels[i]) for i in range(batch)) / batch
    assert got == pytest.approx((1 - alpha) * label + alpha * teacher_term, rel=1e-6)


def test_single_head_student_takes_both_terms(logits):
    alpha, tau = 0.4, 2.0
    loss_fn = DistillationLoss("soft", alpha=alpha, tau=tau)
    got = loss_fn(logits["cls"], logits["targets"], logits["teacher"]).item()
    batch = logits["cls"].shape[0]
    label = sum(_ce(logits["cls"][i], int(logits["targets"][i])) for i in range(batch)) / batch
    kl = sum(_kl(logits["teacher"][i], logits["cls"][i], tau) for i in range(batch)) / batch
    assert got == pytest.approx((1 - alpha) * label + alpha * tau**2 * kl, rel=1e-6)


def test_heads_get_their_own_terms_and_the_teacher_no_gradient(logits):
    cls = logits["cls"].clone().requires_grad_()
    dist = logits["dist"].clone().requires_grad_()
    teacher = logits["teacher"].clone().requires_grad_()
    loss_fn = DistillationLoss("soft", alpha=0.5, tau=2.0)
    loss_fn((cls, dist), logits["targets"], teacher).backward()
    # the class head's gradient is the label term's alone: it does not depend on the teacher
    cls_only = logits["cls"].clone().requires_grad_()
    (0.5 * loss_fn.label_loss(cls_only, logits["targets"])).backward()
    assert torch.allclose(cls.grad, cls_only.grad)
    assert dist.grad.abs().sum() > 0
    assert teacher.grad is None


def test_mixup_targets_and_no_distillation(logits):
    soft_targets = torch.softmax(torch.randn_like(logits["cls"]), dim=-1)
    loss_fn = DistillationLoss("hard", alpha=0.25)
    got = loss_fn((logits["cls"], logits["dist"]), soft_targets, logits["teacher"]).item()
    label = -(soft_targets * torch.log_softmax(logits["cls"], dim=-1)).sum(-1).mean().item()
    teacher_term = nn.functional.cross_entropy(logits["dist"], logits["teacher"].argmax(-1)).item()
    assert got == pytest.approx(0.75 * label + 0.25 * teacher_term, rel=1e-6)

    plain = DistillationLoss("none", label_smoothing=0.1)
    mean_heads = (logits["cls"] + logits["dist"]) / 2
    expected = nn.functional.cross_entropy(mean_heads, logits["targets"], label_smoothing=0.1).item()
    assert plain((logits["cls"], logits["dist"]), logits["targets"]).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="teacher"):
        DistillationLoss("soft")(logits["cls"], logits["targets"])
    with pytest.raises(ValueError, match="none, soft or hard"):
        DistillationLoss("medium")


class _ChannelMeans(nn.Module):
    """A 'model' whose logits are the per-channel means of its input, to see what the teacher is fed."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3)) * self.weight


def test_teacher_is_fed_its_own_normalisation():
    raw = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    student_stats = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    teacher_stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    teacher = Teacher(
        _ChannelMeans(),
        mean=teacher_stats[0],
        std=teacher_stats[1],
        student_mean=student_stats[0],
        student_std=student_stats[1],
    )
    got = teacher(Normalize(*student_stats)(raw))
    expected = Normalize(*teacher_stats)(raw).mean(dim=(2, 3))
    assert torch.allclose(got, expected, atol=1e-5)


def _batches(count: int, size: int = 8, classes: int = 5, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randint(0, 256, (size, 3, 16, 16), dtype=torch.uint8, generator=generator),
            "label": torch.randint(0, classes, (size,), generator=generator),
        }
        for _ in range(count)
    ]


def test_teacher_stays_frozen_while_the_student_learns():
    torch.manual_seed(0)
    student = create_model("deit_micro_distilled_patch4_32", num_classes=5, img_size=16)
    assert use_distillation_token(student, "auto")
    student.set_distilled_training(True)
    teacher_model = create_model("vit_nano_patch4_16", num_classes=5)
    before = {k: v.clone() for k, v in teacher_model.state_dict().items()}
    stats = ((0.5,) * 3, (0.5,) * 3)
    teacher = Teacher(teacher_model, mean=stats[0], std=stats[1], student_mean=stats[0], student_std=stats[1])
    teacher.train()  # whatever the caller does, a teacher stays in eval mode
    assert not teacher.training and not teacher_model.training
    student_before = [p.clone() for p in student.parameters()]
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    stats_out = train_one_epoch(
        student,
        _batches(3),
        optimizer=optimizer,
        scheduler=None,
        criterion=DistillationLoss("soft", alpha=0.5, tau=2.0),
        normalize=Normalize(*stats),
        device=torch.device("cpu"),
        teacher=teacher,
    )
    assert stats_out.steps == 3 and math.isfinite(stats_out.loss)
    assert all(p.grad is None for p in teacher_model.parameters())
    assert all(not p.requires_grad for p in teacher_model.parameters())
    for key, value in teacher_model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert any(not torch.equal(a, b) for a, b in zip(student_before, student.parameters(), strict=True))


def test_evaluation_scores_the_mean_of_both_heads_and_reports_each():
    torch.manual_seed(1)
    model = create_model("deit_micro_distilled_patch4_32", num_classes=5, img_size=16).eval()
    batches = _batches(2, size=16, seed=4)
    normalize = Normalize((0.5,) * 3, (0.5,) * 3)
    result = evaluate(model, batches, normalize=normalize, device=torch.device("cpu"))
    hits = {"mean": 0, "cls": 0, "dist": 0}
    with torch.no_grad():
        for batch in batches:
            images = normalize(batch["image"])
            cls, dist = head_logits(model, images)
            assert torch.allclose((cls + dist) / 2, model(images), atol=1e-5)  # timm's eval output is the mean
            for key, logits in (("mean", (cls + dist) / 2), ("cls", cls), ("dist", dist)):
                hits[key] += int((logits.argmax(1) == batch["label"]).sum())
    assert result["count"] == 32
    assert result["top1"] == pytest.approx(100 * hits["mean"] / 32)
    assert result["top1_cls"] == pytest.approx(100 * hits["cls"] / 32)
    assert result["top1_dist"] == pytest.approx(100 * hits["dist"] / 32)
    single = evaluate(create_model("vit_nano_patch4_16", num_classes=5), batches, normalize=normalize,
                      device=torch.device("cpu"))  # fmt: skip
    assert "top1_cls" not in single


def test_heads_setting():
    plain = create_model("vit_nano_patch4_16", num_classes=3)
    assert not use_distillation_token(plain, "auto")
    with pytest.raises(ValueError, match="no distillation token"):
        use_distillation_token(plain, "token")
    deit = create_model("deit_micro_distilled_patch4_32", num_classes=3)
    assert use_distillation_token(deit, "token") and not use_distillation_token(deit, "single")


def test_teacher_specs_are_recognised():
    assert parse_registry_uri("models:/teacher@champion") == ("teacher", None, "champion")
    assert parse_registry_uri("models:/teacher/3") == ("teacher", "3", None)
    with pytest.raises(ValueError, match="models:/NAME/VERSION"):
        parse_registry_uri("models:/teacher")
    assert teacher_kind("models:/t/1") == "registry"
    assert teacher_kind("runs/checkpoint.pt") == "file"
    assert teacher_kind("resnet18") == "name"


def _fovea_checkpoint(path: Path, model: nn.Module, classes: list[str]) -> Path:
    """A checkpoint as the training worker writes it."""
    config = build_config([{"model": {"name": "vit_nano_patch4_16", "img_size": 16}}]).model_dump(mode="json")
    torch.save({"model": model.state_dict(), "classes": classes, "config": json.dumps(config), "epoch": 3}, path)
    return path


def test_teacher_from_a_fovea_checkpoint_and_from_a_named_weights_file(tmp_path):
    torch.manual_seed(2)
    trained = create_model("vit_nano_patch4_16", num_classes=5).eval()
    probe = torch.randn(2, 3, 16, 16)
    expected = trained(probe)

    from_checkpoint = load_teacher(str(_fovea_checkpoint(tmp_path / "checkpoint.pt", trained, CLASSES)),
                                   num_classes=0, img_size=16)  # fmt: skip
    assert from_checkpoint.classes == CLASSES
    assert torch.allclose(from_checkpoint.model(probe), expected)
    from_folder = load_teacher(str(tmp_path), num_classes=0, img_size=16)
    assert torch.allclose(from_folder.model(probe), expected)

    torch.save(trained.state_dict(), tmp_path / "weights.pth")
    named = load_teacher("vit_nano_patch4_16", num_classes=0, img_size=16, checkpoint=str(tmp_path / "weights.pth"))
    assert torch.allclose(named.model(probe), expected)
    assert named.classes is None  # a bare weights file says nothing of class names: only the count is checked
    check_teacher(named, classes=CLASSES, img_size=16)
    with pytest.raises(ValueError, match="gives \\(5,\\) logits, the dataset has 3"):
        check_teacher(named, classes=["x", "y", "z"], img_size=16)
    with pytest.raises(ValueError, match="classifier does not fit 3 classes"):
        load_teacher("vit_nano_patch4_16", num_classes=3, img_size=16, checkpoint=str(tmp_path / "weights.pth"))
    with pytest.raises(ValueError, match="needs weights"):
        load_teacher("vit_nano_patch4_16", num_classes=5, img_size=16)
    with pytest.raises(ValueError, match="not a fovea checkpoint"):
        load_teacher(str(tmp_path / "weights.pth"), num_classes=5, img_size=16)
    with pytest.raises(ValueError, match="does not take 24x24 images"):
        check_teacher(from_checkpoint, classes=CLASSES, img_size=24)


def test_teacher_from_a_real_mlflow_registry(tmp_path):
    import mlflow

    from fovea.track import log_final_model

    uri = mlflow_store(tmp_path)
    torch.manual_seed(5)
    trained = create_model("vit_nano_patch4_16", num_classes=5).eval()
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("distill-test", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = mlflow.MlflowClient(uri).create_run(experiment).info.run_id
    version = log_final_model(
        uri,
        run_id,
        trained,
        input_example=np.zeros((1, 3, 16, 16), dtype=np.float32),
        registered_model_name="teacher",
        version_tags={"model_name": "vit_nano_patch4_16"},
        classes=CLASSES,
        metadata={
            "model_name": "vit_nano_patch4_16",
            "create_kwargs": {"num_classes": 5},
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
        },
        alias="champion",
    )
    assert version == "1"
    probe = torch.randn(2, 3, 16, 16)
    for spec in ("models:/teacher@champion", "models:/teacher/1"):
        teacher = load_teacher(spec, num_classes=0, img_size=16, tracking_uri=uri)
        assert teacher.details["version"] == "1" and teacher.details["run_id"] == run_id
        assert teacher.classes == CLASSES
        assert teacher.mean == (0.5, 0.5, 0.5) and teacher.std == (0.5, 0.5, 0.5)
        assert torch.allclose(teacher.model(probe), trained(probe))
        check_teacher(teacher, classes=CLASSES, img_size=16)
    with pytest.raises(ValueError, match="trained on classes"):
        check_teacher(teacher, classes=list(reversed(CLASSES)), img_size=16)
    with pytest.raises(ValueError, match="models:/teacher@retired not found"):
        load_teacher("models:/teacher@retired", num_classes=0, img_size=16, tracking_uri=uri)
    with pytest.raises(ValueError, match="models:/nobody/1 not found"):
        load_teacher("models:/nobody/1", num_classes=0, img_size=16, tracking_uri=uri)


def test_distill_config_is_checked_before_ray(tmp_path):
    def config(**distill):
        return build_config([{"model": {"name": "deit_micro_distilled_patch4_32", "img_size": 32}, "distill": distill}])

    with pytest.raises(ConfigError, match="models:/NAME/VERSION"):
        check_before_start(config(type="soft", teacher="models:/teacher"))
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        check_before_start(config(type="soft", teacher=str(tmp_path / "missing.pt")))
    with pytest.raises(ConfigError, match="needs weights"):
        check_before_start(config(type="hard", teacher="resnet18"))
    with pytest.raises(ConfigError, match="unknown model"):
        check_before_start(config(type="hard", teacher="resnet1800", teacher_pretrained=True))
    with pytest.raises(ConfigError, match="go with a teacher given by model name"):
        check_before_start(config(type="hard", teacher="models:/t@a", teacher_checkpoint=str(tmp_path)))
    with pytest.raises(ConfigError, match="not both"):
        config(type="hard", teacher="resnet18", teacher_checkpoint="w.pth", teacher_pretrained=True)
    with pytest.raises(ConfigError, match="distill.kl_reduction"):
        config(type="soft", teacher="models:/t@a", kl_reduction="mean")
    check_before_start(config(type="soft", teacher="models:/t@a", heads="token"))
    plain_student = {"model": {"name": "vit_nano_patch4_16"}}
    with pytest.raises(ConfigError, match="has no distillation token"):
        check_before_start(build_config([plain_student, {"distill": {"type": "soft", "teacher": "models:/t@a",
                                                                     "heads": "token"}}]))  # fmt: skip


def test_cnn_teachers_are_built_whatever_img_size_says():
    # CNNs take no img_size argument; jobs always pass one, so the factory drops it for them
    cnn = create_model("resnet10t", num_classes=4, img_size=32)
    assert cnn(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(ValueError, match="unexpected keyword argument 'window_sizes'"):
        create_model("resnet10t", num_classes=4, img_size=32, window_sizes=3)
