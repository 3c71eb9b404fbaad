"""Step progress inside an epoch, sent from rank 0 to the job's driver as ``fovea-progress {json}`` lines (Ray's log
relay carries a worker's output to the driver, whose ``fovea.console`` draws them as one live line, or as a plain
line now and then when the output is not a terminal). No Ray, no MLflow."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from fovea.console import PROGRESS_MARK  # the driver's console reads the records back by it


class StepProgress:
    """Prints a progress record at most every ``every_s`` seconds: steps done of ``steps``, the samples trained
    (this worker's, times ``world``), the loss of the latest step (read from the device only when a record is
    printed) and the time since the epoch began."""

    def __init__(
        self,
        *,
        epoch: int,
        epochs: int,
        steps: int,
        world: int,
        every_s: float,
        prefix: str = "",
        emit: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.epoch, self.epochs, self.steps, self.world, self.every_s = epoch, epochs, steps, world, every_s
        self.prefix = prefix
        self.emit = emit or (lambda line: print(line, flush=True))
        self.clock = clock
        self.started = clock()
        self.last = self.started

    def step(self, done: int, samples: int, loss: Any) -> None:
        """After optimizer step ``done`` of this epoch; ``loss`` a float or a 0-d tensor."""
        now = self.clock()
        if now - self.last < self.every_s or done >= self.steps:  # the last step: the epoch line follows
            return
        self.last = now
        value = float(loss.item() if hasattr(loss, "item") else loss)
        record = {
            "epoch": self.epoch,
            "epochs": self.epochs,
            "step": done,
            "steps": self.steps,
            "samples": samples * self.world,
            "elapsed_s": round(now - self.started, 3),
            "loss": value if value == value else None,  # NaN is not JSON
        }
        if self.prefix:
            record["prefix"] = self.prefix
        self.emit(PROGRESS_MARK + json.dumps(record))


def step_progress(*, rank: int, every_s: float, epoch: int, epochs: int, steps: int, world: int,
                  prefix: str = "") -> StepProgress | None:  # fmt: skip
    """Rank 0's reporter for the epoch starting now (``epoch`` counted from 1); None elsewhere, or when the driver
    asked for none (``every_s`` 0: a library call, or a sweep's trial)."""
    if rank != 0 or every_s <= 0:
        return None
    return StepProgress(epoch=epoch, epochs=epochs, steps=steps, world=world, every_s=every_s, prefix=prefix)
