"""The training-curves figure: drawn from a run's history, or from the per-epoch metrics a store holds."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fovea.track import store


def plot_curves(history: Iterable[dict[str, float]]) -> Any:
    """A two-panel figure of the run so far: losses, and validation accuracy, per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = list(history)
    epochs = [row["epoch"] for row in rows]
    figure = Figure(figsize=(10, 4), dpi=100)
    loss_ax, acc_ax = figure.subplots(1, 2)
    nan = float("nan")
    loss_ax.plot(epochs, [r.get("train_loss", nan) for r in rows], marker="o", label="train loss")
    loss_ax.plot(epochs, [r.get("val_loss", nan) for r in rows], marker="o", label="val loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_title("loss")
    loss_ax.legend()
    acc_ax.plot(epochs, [r.get("val_top1", nan) for r in rows], marker="o", label="val top-1")
    acc_ax.plot(epochs, [r.get("val_top5", nan) for r in rows], marker="o", label="val top-5")
    if any("val_top1_ema" in r for r in rows):
        acc_ax.plot(epochs, [r.get("val_top1_ema", float("nan")) for r in rows], marker=".", label="val top-1 (EMA)")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("%")
    acc_ax.set_ylim(0, 100)
    acc_ax.set_title("validation accuracy")
    acc_ax.legend(loc="lower right")
    figure.tight_layout()
    return figure


CURVE_METRICS = ("train_loss", "val_loss", "val_top1", "val_top5", "val_top1_ema")


def log_curves_from_run(uri: str, run_id: str, artifact_file: str = "training_curves.png") -> bool:
    """Draw ``training_curves.png`` from the per-epoch metrics the store holds for ``run_id`` and log it there.

    The driver (or a sweep's trial function) calls this once a run has ended, off the training path. Returns False
    when the run has no per-epoch metrics.
    """
    client = store.client(uri)
    histories = {key: {m.step: m.value for m in client.get_metric_history(run_id, key)} for key in CURVE_METRICS}
    epochs = sorted(histories["val_top1"])
    if not epochs:
        return False
    rows = [{"epoch": epoch, **{k: h[epoch] for k, h in histories.items() if epoch in h}} for epoch in epochs]
    client.log_figure(run_id, plot_curves(rows), artifact_file)
    return True
