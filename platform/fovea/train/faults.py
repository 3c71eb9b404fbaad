"""Fault injection for drills and tests, as step hooks: objects the training loop calls around every optimizer step
(``before_step(step)`` before its first micro-batch, ``after_step(step)`` once its gradients are in), so the loop
never asks what kind of loss it was given."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import torch
from torch import nn


class StepHook(Protocol):
    """Called by ``train_one_epoch`` around each optimizer step; ``step`` is the global step, 1-based."""

    def before_step(self, step: int) -> None: ...

    def after_step(self, step: int) -> None: ...


class NanAtSteps(nn.Module):
    """``train.inject_nan_steps``: the wrapped loss becomes NaN at the given global optimizer steps (1-based;
    accumulation's micro-batches share their step's number), once each, like a transient spike: a step trained again
    after a rollback is clean. It is its own step hook (pass it in ``hooks``)."""

    def __init__(self, criterion: nn.Module, steps: Iterable[int]) -> None:
        super().__init__()
        self.criterion, self.pending, self.step, self.fired = criterion, set(steps), 0, 0

    def forward(self, *args: Any) -> torch.Tensor:
        loss = self.criterion(*args)
        if self.step in self.pending:
            return loss * float("nan")
        return loss

    def before_step(self, step: int) -> None:
        self.step = step

    def after_step(self, step: int) -> None:
        """That step's fault, if any, has fired."""
        if step in self.pending:
            self.pending.discard(step)
            self.fired += 1
