"""What a run does on a run of non-finite steps: roll back to the last good epoch (kept in host memory) with a lower
learning rate, or stop in one line (``train.nonfinite_action``, ``train.max_rollbacks``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from fovea.train.device import unwrap
from fovea.train.schedule import scale_learning_rates


class NonFiniteSteps(RuntimeError):
    """``train.nonfinite_patience`` optimizer steps in a row had a non-finite loss or gradient."""

    def __init__(self, step: int, run: int) -> None:
        super().__init__(f"{run} steps in a row with a non-finite loss or gradient, up to step {step}")
        self.step, self.run = step, run


class NonFiniteTraining(RuntimeError):
    """The run stopped on non-finite steps (``train.nonfinite_action=stop``, or rollbacks used up); one line."""


def cpu_copy(value: Any) -> Any:
    """``value`` with every tensor in it (through dicts, lists and tuples) copied to host memory."""
    import torch

    if torch.is_tensor(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: cpu_copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(cpu_copy(item) for item in value)
    return value


class TrainingSnapshot:
    """The last good training state (weights, optimizer moments, schedule, EMA) in host memory: what a rollback
    after a run of non-finite steps returns to. Taken after every epoch that ended well."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    def take(self, *, model: nn.Module, optimizer: Any, scheduler: LambdaLR, ema: Any, epoch: int, step: int) -> None:
        self.state = {
            "model": cpu_copy(unwrap(model).state_dict()),
            "optimizer": cpu_copy(optimizer.state_dict()),
            "scheduler": scheduler.state_dict(),
            "ema": cpu_copy(ema.module.state_dict()) if ema is not None else None,
            "epoch": epoch,
            "step": step,
        }

    def restore(
        self, *, model: nn.Module, optimizer: Any, scheduler: LambdaLR, ema: Any, lr_factor: float
    ) -> tuple[int, int]:
        """Load the snapshot and multiply the learning rates (the whole schedule) by ``lr_factor``.

        Returns:
            ``(epoch, global_step)`` of the snapshot: where training goes on.
        """
        if self.state is None:
            raise RuntimeError("no training state to roll back to")
        unwrap(model).load_state_dict(self.state["model"])
        optimizer.load_state_dict(self.state["optimizer"])
        scheduler.load_state_dict(self.state["scheduler"])
        if ema is not None and self.state["ema"] is not None:
            ema.module.load_state_dict(self.state["ema"])
        scale_learning_rates(optimizer, scheduler, lr_factor)
        return self.state["epoch"], self.state["step"]


class Rollbacks:
    """A run's rollbacks: the snapshot they return to (kept only when they can happen: about 3x the weights for
    AdamW, in host memory), how many there were and the learning rate's factor they left."""

    def __init__(self, train_cfg: Any, *, lr_scale: float = 1.0) -> None:
        self.cfg = train_cfg
        self.enabled = train_cfg.nonfinite_patience > 0 and train_cfg.nonfinite_action == "rollback"
        self.snapshot = TrainingSnapshot()
        self.count = 0
        self.lr_scale = lr_scale

    def take(self, parts: Any, *, epoch: int, step: int) -> None:
        """Remember the state after an epoch that ended well (when rollbacks are on)."""
        if self.enabled:
            self.snapshot.take(
                model=parts.model,
                optimizer=parts.optimizer,
                scheduler=parts.scheduler,
                ema=parts.ema,
                epoch=epoch,
                step=step,
            )

    def recover(
        self, fault: NonFiniteSteps, parts: Any, *, epoch: int, log: Callable[[dict, int], None]
    ) -> tuple[int, int, str]:
        """Roll back after ``fault`` in (0-based) ``epoch``, or stop.

        Args:
            log: ``log(metrics, step)`` for the run's record (the tracker's, or a no-op).

        Returns:
            ``(epoch, global_step, warning)``: where training goes on, and the line that says so.

        Raises:
            NonFiniteTraining: ``train.nonfinite_action=stop``, or ``train.max_rollbacks`` used up (one line).
        """
        cfg = self.cfg
        self.count += 1
        event = f"epoch {epoch + 1}: {fault}"
        log({"nonfinite_run": fault.run, "nonfinite_events": self.count}, fault.step)
        if cfg.nonfinite_action == "stop" or self.count > cfg.max_rollbacks:
            why = (
                "train.nonfinite_action=stop"
                if cfg.nonfinite_action == "stop"
                else f"{cfg.max_rollbacks} rollbacks already (train.max_rollbacks)"
            )
            raise NonFiniteTraining(f"{event}; stopping: {why}") from None
        epoch, step = self.snapshot.restore(
            model=parts.model,
            optimizer=parts.optimizer,
            scheduler=parts.scheduler,
            ema=parts.ema,
            lr_factor=cfg.rollback_lr_factor,
        )
        self.lr_scale *= cfg.rollback_lr_factor
        log({"rollbacks": self.count, "lr_scale": self.lr_scale}, step)
        warning = (
            f"warning: {event}; rolled back to the end of epoch {epoch} with the learning rate x"
            f"{cfg.rollback_lr_factor:g} (now x{self.lr_scale:g} of the config's; rollback {self.count} of"
            f" at most {cfg.max_rollbacks})"
        )
        return epoch, step, warning
