"""The plain-PyTorch train/eval steps: optimizer groups, schedule, normalisation, mixup, accumulation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fovea.config import DataConfig, OptimConfig
from fovea.models import create_model
from fovea.train.build import build_criterion, build_mixup, build_optimizer
from fovea.train.device import skips_on_device
from fovea.train.faults import NanAtSteps
from fovea.train.loop import Normalize, evaluate, train_one_epoch
from fovea.train.rollback import NonFiniteSteps, TrainingSnapshot
from fovea.train.schedule import build_scheduler, move_schedule

CPU = torch.device("cpu")


def _batches(n_batches, batch=8, size=16, classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        labels = torch.randint(0, classes, (batch,), generator=gen)
        # class-dependent brightness so a model can learn it
        images = labels.view(-1, 1, 1, 1) * 80 + torch.randint(0, 40, (batch, 3, size, size), generator=gen)
        out.append({"image": images.to(torch.uint8), "label": labels})
    return out


def test_no_weight_decay_on_norms_biases_and_position_embeddings():
    model = create_model("vit_nano_patch4_16", num_classes=3)
    optimizer = build_optimizer(model, OptimConfig(weight_decay=0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for param in group["params"]:
            name = names[id(param)]
            no_decay = param.ndim <= 1 or name in ("pos_embed", "cls_token")
            assert group["weight_decay"] == (0.0 if no_decay else 0.1), name


def test_layer_decay_scales_lr_per_depth():
    model = create_model("vit_nano_patch4_16", num_classes=3)
    optimizer = build_optimizer(model, OptimConfig(lr=1.0, layer_decay=0.5))
    lrs = sorted({round(g["lr"], 6) for g in optimizer.param_groups})
    assert lrs == [0.125, 0.25, 0.5, 1.0]  # embeddings, block 0, block 1, head for a depth-2 model


def test_warmup_then_cosine_schedule():
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = build_scheduler(optimizer, total_steps=110, warmup_steps=10, min_lr_ratio=0.01)
    lrs = []
    for _ in range(110):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[-1] == pytest.approx(0.01, abs=1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_normalize_matches_reference():
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(Normalize(mean, std)(images), expected)


def test_training_reduces_loss_and_evaluation_counts():
    torch.manual_seed(0)
    model = create_model("vit_nano_patch4_16", num_classes=3)
    optimizer = build_optimizer(model, OptimConfig(lr=3e-3, weight_decay=0.0))
    norm = Normalize((0.5,) * 3, (0.5,) * 3)
    criterion = build_criterion(mixup=None, label_smoothing=0.0)
    data = _batches(20)
    before = evaluate(model, data, normalize=norm, device=CPU)
    steps = []
    for epoch in range(4):
        stats = train_one_epoch(
            model,
            data,
            optimizer=optimizer,
            scheduler=None,
            criterion=criterion,
            normalize=norm,
            device=CPU,
            grad_clip=1.0,
            on_step=lambda step, loss, lr: steps.append(step),
            start_step=epoch * 20,
        )
        assert stats.steps == 20 and stats.samples == 160
    after = evaluate(model, data, normalize=norm, device=CPU)
    assert after["count"] == 160
    assert after["loss"] < before["loss"] * 0.5
    assert after["top1"] > 90.0 and after["top5"] == 100.0
    assert steps == list(range(1, 81))


def test_gradient_accumulation_matches_one_big_batch():
    torch.manual_seed(0)
    data = _batches(4, batch=4)
    big = {"image": torch.cat([b["image"] for b in data]), "label": torch.cat([b["label"] for b in data])}
    norm = Normalize((0.5,) * 3, (0.5,) * 3)
    criterion = nn.CrossEntropyLoss()
    results = []
    for batches, accum in (([big], 1), (data, 4)):
        torch.manual_seed(1)
        model = create_model("vit_nano_patch4_16", num_classes=3, drop_path_rate=0.0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        stats = train_one_epoch(
            model,
            batches,
            optimizer=optimizer,
            scheduler=None,
            criterion=criterion,
            normalize=norm,
            device=CPU,
            accum_steps=accum,
        )
        assert stats.steps == 1
        results.append(model.head.weight.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-5)


def test_non_finite_loss_skips_the_step():
    model = create_model("vit_nano_patch4_16", num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    class NanLoss(nn.Module):
        def forward(self, logits, targets):
            return logits.sum() * float("nan")

    stats = train_one_epoch(
        model,
        _batches(3),
        optimizer=optimizer,
        scheduler=None,
        criterion=NanLoss(),
        normalize=Normalize((0.5,) * 3, (0.5,) * 3),
        device=CPU,
    )
    assert stats.skipped_batches == 3 and stats.longest_skip_run == 3 and stats.steps == 3
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_fused_adamw_skips_non_finite_steps_on_the_device():
    torch.manual_seed(0)
    model = create_model("vit_nano_patch4_16", num_classes=3, drop_path_rate=0.0)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-2), fused=True)
    assert skips_on_device(optimizer)
    calls = []

    class SometimesNan(nn.Module):  # batches 2 and 3 (of 5) give a NaN loss
        def forward(self, logits, targets):
            calls.append(1)
            loss = nn.functional.cross_entropy(logits, targets)
            return loss * float("nan") if len(calls) in (2, 3) else loss

    snapshots = []
    stats = train_one_epoch(
        model,
        _batches(5),
        optimizer=optimizer,
        scheduler=None,
        criterion=SometimesNan(),
        normalize=Normalize((0.5,) * 3, (0.5,) * 3),
        device=CPU,
        grad_clip=1.0,
        on_step=lambda step, loss, lr: snapshots.append((step, loss, model.head.weight.detach().clone())),
    )
    assert stats.steps == 5 and stats.skipped_batches == 2 and stats.longest_skip_run == 2
    assert math.isfinite(stats.loss)
    # steps 2 and 3 left the weights and Adam's step count as they were; 4 moved them again
    torch.testing.assert_close(snapshots[1][2], snapshots[0][2])
    torch.testing.assert_close(snapshots[2][2], snapshots[0][2])
    assert not torch.equal(snapshots[3][2], snapshots[0][2])
    assert math.isnan(snapshots[1][1]) and math.isfinite(snapshots[3][1])
    assert int(optimizer.state[model.head.weight]["step"]) == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_mixup_runs_with_soft_targets_and_odd_batches():
    mixup = build_mixup(DataConfig(mixup=0.8, cutmix=1.0), num_classes=3, label_smoothing=0.1)
    assert mixup is not None
    criterion = build_criterion(mixup=mixup, label_smoothing=0.1)
    model = create_model("vit_nano_patch4_16", num_classes=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    stats = train_one_epoch(
        model,
        _batches(2, batch=7),
        optimizer=optimizer,
        scheduler=None,
        criterion=criterion,
        normalize=Normalize((0.5,) * 3, (0.5,) * 3),
        device=CPU,
        mixup=mixup,
    )
    assert stats.steps == 2 and stats.samples == 12 and math.isfinite(stats.loss)
    assert build_mixup(DataConfig(), num_classes=3, label_smoothing=0.1) is None


def test_evaluate_top5_with_fewer_classes_and_exact_counts():
    class Fixed(nn.Module):
        def forward(self, x):
            logits = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0]])
            return logits[: x.shape[0]]

    batch = {"image": torch.zeros(4, 3, 2, 2, dtype=torch.uint8), "label": torch.tensor([0, 1, 1, 0])}
    result = evaluate(Fixed(), [batch], normalize=Normalize((0.0,) * 3, (1.0,) * 3), device=CPU)
    assert result["top1"] == pytest.approx(50.0) and result["top5"] == pytest.approx(100.0)
    assert result["count"] == 4


def test_move_schedule_sets_the_position_and_the_learning_rate():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = build_scheduler(optimizer, total_steps=20, warmup_steps=2, min_lr_ratio=1e-3)
    move_schedule(optimizer, scheduler, 11)  # halfway through the cosine part: half the way down
    assert scheduler.last_epoch == 11
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)
    assert scheduler.get_last_lr() == [optimizer.param_groups[0]["lr"]]
    optimizer.step()
    scheduler.step()  # and it goes on from there
    assert scheduler.last_epoch == 12
    assert optimizer.param_groups[0]["lr"] < 1e-6 + (1e-3 - 1e-6) * 0.5


def _nan_epoch(patience: int, log_every: int, nan_steps: range, batches: int = 10):
    model = create_model("vit_nano_patch4_16", num_classes=3)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3), fused=True)
    criterion = NanAtSteps(nn.CrossEntropyLoss(), nan_steps)
    return (
        model,
        optimizer,
        criterion,
        lambda: train_one_epoch(
            model,
            _batches(batches),
            optimizer=optimizer,
            scheduler=None,
            criterion=criterion,
            normalize=Normalize((0.5,) * 3, (0.5,) * 3),
            device=CPU,
            log_every=log_every,
            patience=patience,
            hooks=(criterion,),
        ),
    )


def test_a_run_of_non_finite_steps_raises_after_patience():
    _, _, criterion, run = _nan_epoch(patience=4, log_every=1, nan_steps=range(3, 9))
    with pytest.raises(NonFiniteSteps, match="4 steps in a row") as caught:
        run()
    assert (caught.value.step, caught.value.run) == (6, 4)
    # checked only every log_every steps: seen at step 10, where the run (steps 3-8) has ended but was 6 long
    _, _, criterion, run = _nan_epoch(patience=4, log_every=5, nan_steps=range(3, 9))
    with pytest.raises(NonFiniteSteps) as caught:
        run()
    assert (caught.value.step, caught.value.run) == (10, 6)
    assert criterion.fired == 6 and not criterion.pending  # each injected fault fires once
    # shorter runs are only skipped and counted
    _, _, _, run = _nan_epoch(patience=4, log_every=1, nan_steps=[2, 3, 4, 6, 7, 8])
    stats = run()
    assert stats.skipped_batches == 6 and stats.longest_skip_run == 3


def test_snapshot_restore_returns_the_state_and_lowers_the_learning_rate():
    torch.manual_seed(0)
    model = create_model("vit_nano_patch4_16", num_classes=3)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3), fused=True)
    scheduler = build_scheduler(optimizer, total_steps=40, warmup_steps=5)
    criterion, norm = nn.CrossEntropyLoss(), Normalize((0.5,) * 3, (0.5,) * 3)

    def epoch():
        train_one_epoch(
            model,
            _batches(5),
            optimizer=optimizer,
            scheduler=scheduler,
            criterion=criterion,
            normalize=norm,
            device=CPU,
        )

    epoch()
    snapshot = TrainingSnapshot()
    snapshot.take(model=model, optimizer=optimizer, scheduler=scheduler, ema=None, epoch=1, step=5)
    weights = model.head.weight.detach().clone()
    lr_before = optimizer.param_groups[0]["lr"]
    epoch()
    assert not torch.equal(model.head.weight, weights) and scheduler.last_epoch == 10
    assert snapshot.restore(model=model, optimizer=optimizer, scheduler=scheduler, ema=None, lr_factor=0.5) == (1, 5)
    torch.testing.assert_close(model.head.weight, weights)
    assert scheduler.last_epoch == 5 and scheduler.base_lrs == [pytest.approx(5e-4)] * len(scheduler.base_lrs)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr_before * 0.5)
    assert int(optimizer.state[model.head.weight]["step"]) == 5  # Adam's moments are the snapshot's too
    epoch()  # and training goes on from there, on the lowered schedule
    assert scheduler.last_epoch == 10 and optimizer.param_groups[0]["lr"] < lr_before * 0.5
