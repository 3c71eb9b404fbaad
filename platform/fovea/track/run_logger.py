"""The rank-0 run logger (``RunLogger``) and its sender thread, and the fallback file it leaves in an outage.

Tracking must never kill training: every call to the tracking store is wrapped, failed batches stay in the
buffer and are sent with the next flush, and the first failure prints one warning.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fovea.errors import first_line
from fovea.secrets import redact
from fovea.track import store
from fovea.track.curves import plot_curves
from fovea.track.store import MAX_BATCH, STOP_REASON_TAG, is_connection_problem, param_batches, with_retries

log = logging.getLogger(__name__)


class RunLogger:
    """Logs one training run from rank 0 without slowing it down, and without losing anything in an outage.

    The training thread only appends to an in-memory buffer (metrics, the config, the curves' history); a daemon
    thread sends it every ``flush_interval_s``, metrics in batches of up to 900 per ``log_batch`` call, and renders
    and uploads the curves figure (only the newest one: older pending figures are replaced). When the tracking
    store cannot be reached, the buffer keeps everything and the thread retries, every 2 s at first and then less
    often (at most every 30 s); one warning says so, and one line says when the store is back. ``close`` waits up
    to ``timeout`` for the store to take the rest, then writes what is still unsent to ``<fallback_dir>/<run_id>
    .jsonl`` with a warning (``fovea runs sync FILE`` replays it).

    A worker can also be killed mid-outage (Ray Train tears a worker group down when a node is lost), so while the
    store is down that same file always holds the unsent buffer; the next logger of the run on this node (the
    restarted worker) takes it over and sends it. Epochs a lost node's logger held are sent again from the
    checkpoint's history (``backfill``) when the store lacks them.

    ``blocking_s`` is the time the training thread spent in tracking (construction included), ``send_s`` the
    sender thread's time in calls to the store. With an ``http(s)`` store, MLflow's own HTTP retries are cut to one
    in this process (environment defaults; the user's settings win), so the sender notices an outage in seconds.

    Args:
        uri: tracking URI (absolute, see ``resolve_tracking_uri``).
        run_id: the run to continue (from a checkpoint); a new run is created when None.
        experiment_id: experiment for a new run.
        run_name: name of a new run.
        params: flat ``{name: value}`` logged once on a new run.
        tags: tags set on the run.
        flush_interval_s: how often the sender thread sends the buffer.
        fallback_dir: where ``close`` writes what the store never took (default ``$FOVEA_HOME/tracking_fallback``).
        start_timeout_s: how long creating a new run may wait for an unreachable store.
        backfill: for a given run, the per-epoch metrics of the checkpoint it resumes from (``{"epoch": N, ...}``
            rows): those of epochs the store does not have are sent (before anything else) once it is reached.
    """

    def __init__(
        self,
        uri: str,
        *,
        run_id: str | None,
        experiment_id: str,
        run_name: str,
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        flush_interval_s: float = 10.0,
        fallback_dir: str | Path | None = None,
        start_timeout_s: float = 60.0,
        backfill: Iterable[dict[str, float]] = (),
    ) -> None:
        started = self.started = time.perf_counter()
        if uri.startswith(("http://", "https://")):
            # The sender thread does the retrying: MLflow's own HTTP retries (7, with growing back-off) would hide an
            # outage from it for minutes. Settings the user made win.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self.uri = uri
        self.client: Any = None  # made by the sender thread (importing MLflow takes a second of CPU)
        self.flush_interval_s = flush_interval_s
        self.fallback_dir = Path(fallback_dir) if fallback_dir else None
        self.start_timeout_s = start_timeout_s
        self.blocking_s = self.send_s = 0.0
        self.sent_metrics = 0
        self._run_id = run_id
        self._given_run_id = run_id is not None
        self._reopen: dict[str, str] | None = None  # tags still to set on a given run (it is marked RUNNING with them)
        self._backfill = [dict(row) for row in backfill]
        self._spooled = False  # whether the fallback file holds (a copy of) the buffer
        self._opened = threading.Event()
        self._open_error: BaseException | None = None
        self._metrics: list[Any] = []
        self._artifacts: dict[str, tuple[str, Any]] = {}  # artifact file -> (kind, payload): the newest only
        self._cond = threading.Condition()
        self._draining = self._stopped = False
        self._down_since: float | None = None
        if run_id is not None:
            self._reopen = dict(tags or {})
        opening = dict(experiment_id=experiment_id, run_name=run_name, params=params or {}, tags=tags or {})
        self._thread = threading.Thread(
            target=self._send_loop, args=(opening,), name="fovea-mlflow-sender", daemon=True
        )
        self._thread.start()
        self.blocking_s += time.perf_counter() - started

    @property
    def run_id(self) -> str:
        """The run's id. The sender thread creates a new run, so the first call may wait for it; a given run's id
        comes back at once (reopening it waits for the store like any other send).

        Raises:
            RuntimeError: the run could not be created or reopened within ``start_timeout_s`` (one line).
        """
        if self._given_run_id and self._open_error is None:
            return self._run_id
        started = time.perf_counter()
        ready = self._opened.wait(timeout=self.start_timeout_s)
        self.blocking_s += time.perf_counter() - started
        if not ready or self._open_error is not None or self._run_id is None:
            reason = first_line(self._open_error) if self._open_error else f"no answer in {self.start_timeout_s} s"
            raise RuntimeError(f"could not open an MLflow run at {self.uri}: {reason}")
        return self._run_id

    def _open(self, experiment_id: str, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        """Create the run (with its params; retried while the store is unreachable, up to ``start_timeout_s``), or
        leave the reopening of the given one (RUNNING again, its tags) to the first send: an outage then (a resumed
        run, the store down) is waited out like any other."""
        timeout = self.start_timeout_s
        self.client = store.client(self.uri)
        if self._run_id is None:
            run = with_retries(lambda: self.client.create_run(experiment_id, run_name=run_name, tags=tags), timeout)
            self._run_id = run.info.run_id
            for batch in param_batches(params):
                with_retries(lambda b=batch: self.client.log_batch(self._run_id, params=b), timeout)
        else:
            self._reopen = dict(tags)
            self._take_over_spool()

    # --- the training thread's side: append and return -----------------------------------------------------------

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffer metrics for ``step`` (timestamped now); the sender thread sends them."""
        started = time.perf_counter()
        now = int(time.time() * 1000)
        with self._cond:  # plain tuples: MLflow's Metric objects are made by the sender thread
            self._metrics.extend((key, float(value), now, step) for key, value in metrics.items())
        self.blocking_s += time.perf_counter() - started

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        """Buffer a JSON/YAML artifact (a copy is taken now, secrets redacted)."""
        started = time.perf_counter()
        with self._cond:
            self._artifacts[artifact_file] = ("dict", json.loads(json.dumps(redact(data))))
        self.blocking_s += time.perf_counter() - started

    def log_curves(self, history: Iterable[dict[str, float]], artifact_file: str = "training_curves.png") -> None:
        """Buffer the curves of ``history``; the sender thread draws them (``plot_curves``) and uploads the PNG."""
        started = time.perf_counter()
        with self._cond:
            self._artifacts[artifact_file] = ("curves", [dict(row) for row in history])
        self.blocking_s += time.perf_counter() - started

    def flush(self, timeout: float = 0.0) -> bool:
        """Ask the sender to send now; wait up to ``timeout`` seconds for the buffer to empty. True when empty."""
        started = time.perf_counter()
        with self._cond:
            self._cond.notify_all()
            if timeout > 0:
                self._cond.wait_for(
                    lambda: self._empty() or self._stopped or not self._thread.is_alive(), timeout=timeout
                )
            empty = self._empty()
        self.blocking_s += time.perf_counter() - started
        return empty

    def pending(self) -> int:
        """Metrics and artifacts not yet taken by the store."""
        with self._cond:
            return len(self._metrics) + len(self._artifacts)

    def close(self, status: str | None = None, timeout: float = 300.0) -> Path | None:
        """Send what is buffered (waiting up to ``timeout`` s for an unreachable store), stop the sender, and end the
        run with ``status`` (None leaves it running: the driver ends it once the model is logged).

        Returns:
            The fallback file when the store did not take everything in time (nothing is dropped), else None.
        """
        started = time.perf_counter()
        with self._cond:
            self._draining = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._empty() or self._stopped or not self._thread.is_alive(), timeout=timeout)
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=60)
        fallback = None
        with self._cond:
            if not self._empty() and self._run_id is not None:
                fallback = self._write_fallback(status)
        if fallback is None and status is not None and self.client is not None and self._run_id is not None:
            try:
                self.client.set_terminated(self._run_id, status)
            except Exception as err:  # the store went away again: the driver or a rerun ends the run
                log.warning("could not end MLflow run %s: %s", self._run_id, err)
        self.blocking_s += time.perf_counter() - started
        return fallback

    # --- the sender thread ---------------------------------------------------------------------------------------

    def _empty(self) -> bool:
        return not self._metrics and not self._artifacts and self._reopen is None

    def _send_loop(self, opening: dict[str, Any]) -> None:
        started = time.perf_counter()
        try:
            self._open(**opening)
        except Exception as err:  # reported by run_id; what was buffered goes to the fallback file on close
            self._open_error = err
            print(f"warning: could not open the MLflow run at {self.uri} ({first_line(err)[:200]})", flush=True)
            return
        finally:
            self.send_s += time.perf_counter() - started
            self._opened.set()
        if self._reopen is not None:
            self._send_pending()  # reopen the given run now (or notice the outage)
        while True:
            with self._cond:
                if not self._stopped:
                    if self._down_since is not None:  # retrying: soon at first, then less often; soon when closing
                        outage = time.monotonic() - self._down_since
                        wait = 2.0 if self._draining else min(30.0, max(2.0, outage))
                    elif self._draining:
                        wait = 0.2 if self._empty() else 0.0
                    else:
                        wait = self.flush_interval_s
                    if wait:
                        self._cond.wait(timeout=wait)  # flush() and close() wake it early
                if self._stopped:
                    return
            self._send_pending()
            with self._cond:
                self._cond.notify_all()  # wake flush()/close() waiting for an empty buffer

    def _send_pending(self) -> None:
        """Send everything buffered now; what fails stays buffered (in order) for the next attempt."""
        from mlflow.entities import Metric

        started = time.perf_counter()
        try:
            if self._reopen is not None:
                try:
                    self.client.update_run(self._run_id, status="RUNNING")
                    for key, value in self._reopen.items():
                        self.client.set_tag(self._run_id, key, value)
                    if STOP_REASON_TAG in self.client.get_run(self._run_id).data.tags:  # why it stopped last time
                        self.client.delete_tag(self._run_id, STOP_REASON_TAG)
                except Exception as err:
                    if is_connection_problem(err):
                        raise
                    self._open_error = err  # e.g. the run was deleted: stop; close() keeps the buffer in a file
                    with self._cond:
                        self._stopped = True
                    print(f"warning: could not reopen MLflow run {self._run_id} ({first_line(err)[:200]})", flush=True)
                    return
                self._queue_backfill()
                self._reopen = None
            while True:
                with self._cond:
                    chunk = self._metrics[:MAX_BATCH]
                if not chunk:
                    break
                self.client.log_batch(self._run_id, metrics=[Metric(*item) for item in chunk])
                with self._cond:
                    del self._metrics[: len(chunk)]  # only this thread removes, always from the front
                self.sent_metrics += len(chunk)
            with self._cond:
                artifacts = dict(self._artifacts)
            for artifact_file, (kind, payload) in artifacts.items():
                if kind == "dict":
                    self.client.log_dict(self._run_id, payload, artifact_file)
                else:
                    figure = plot_curves(payload)
                    self.client.log_figure(self._run_id, figure, artifact_file)
                with self._cond:
                    if self._artifacts.get(artifact_file, (None, None))[1] is payload:  # not replaced meanwhile
                        del self._artifacts[artifact_file]
        except Exception as err:  # the tracking store being down must not stop training: keep and retry
            self._spool()  # on disk too: a worker killed now (a lost node) leaves it to the next attempt
            if self._down_since is None:
                self._down_since = time.monotonic()
                print(
                    f"warning: MLflow tracking store unreachable ({type(err).__name__}: {first_line(err)[:160]}); "
                    f"training goes on, {self.pending()} metrics/artifacts held and retried",
                    flush=True,
                )
        else:
            if self._spooled:
                self._spool_path().unlink(missing_ok=True)
                self._spooled = False
            if self._down_since is not None:
                print(
                    f"MLflow tracking store reachable again after {time.monotonic() - self._down_since:.0f} s: "
                    "held metrics sent",
                    flush=True,
                )
                self._down_since = None
        finally:
            self.send_s += time.perf_counter() - started

    def _spool_path(self) -> Path:
        from fovea.paths import fovea_home

        return (self.fallback_dir or fovea_home() / "tracking_fallback") / f"{self._run_id}.jsonl"

    def _dump(self, status: str | None) -> Path:
        """Write the unsent buffer as JSON lines (a header, then metrics and artifacts), replacing the file at once;
        called under the lock."""
        path = self._spool_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        with temporary.open("w") as out:
            out.write(json.dumps({"run_id": self._run_id, "tracking_uri": self.uri, "status": status}) + "\n")
            for key, value, timestamp, step in self._metrics:
                record = {"key": key, "value": value, "timestamp": timestamp, "step": step}
                out.write(json.dumps({"metric": record}) + "\n")
            for artifact_file, (kind, payload) in self._artifacts.items():
                out.write(json.dumps({"artifact": artifact_file, "kind": kind, "payload": payload}) + "\n")
        os.replace(temporary, path)
        return path

    def _spool(self) -> None:
        """Keep the unsent buffer on disk while the store is down (never fails: training goes on either way)."""
        if self._run_id is None:
            return
        try:
            with self._cond:
                self._dump(None)
            self._spooled = True
        except OSError as err:
            log.warning("could not write the held metrics to %s: %s", self._spool_path(), err)

    def _take_over_spool(self) -> None:
        """Put what an earlier logger of this run left on this node (killed during an outage) first in the buffer."""
        path = self._spool_path()
        if not path.is_file():
            return
        try:
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except (OSError, json.JSONDecodeError) as err:
            print(f"warning: {path}: unreadable held metrics ({err}); left there", flush=True)
            return
        metrics = [tuple(line["metric"][k] for k in ("key", "value", "timestamp", "step")) for line in lines
                   if "metric" in line]  # fmt: skip
        artifacts = {line["artifact"]: (line["kind"], line["payload"]) for line in lines if "artifact" in line}
        with self._cond:
            self._metrics[:0] = metrics
            self._artifacts = {**artifacts, **self._artifacts}
        self._spooled = True  # the file goes once its content is sent
        print(f"{len(metrics)} held metrics of run {self._run_id} left by an earlier attempt ({path}): sending them",
              flush=True)  # fmt: skip

    def _queue_backfill(self) -> None:
        """Queue the backfill rows of epochs the store has no ``val_loss`` for (and that are not buffered)."""
        if not self._backfill:
            return
        stored = {m.step for m in self.client.get_metric_history(self._run_id, "val_loss")}
        with self._cond:
            buffered = {step for key, _, _, step in self._metrics if key == "val_loss"}
            missing = [row for row in self._backfill if int(row["epoch"]) not in stored | buffered]
            now = int(time.time() * 1000)
            self._metrics[:0] = [(key, float(value), now, int(row["epoch"])) for row in missing
                                 for key, value in row.items()]  # fmt: skip
        if missing:
            epochs = ", ".join(str(int(row["epoch"])) for row in missing)
            print(f"epochs {epochs} of run {self._run_id} were not in the tracking store: sent from the checkpoint",
                  flush=True)  # fmt: skip
        self._backfill = []

    def _write_fallback(self, status: str | None) -> Path:
        """Write the unsent buffer to the fallback file, with a warning; called under the lock."""
        path = self._dump(status)
        count = len(self._metrics)
        print(
            f"warning: the MLflow tracking store at {self.uri} did not come back in time: {count} metrics and "
            f"{len(self._artifacts)} artifacts of run {self._run_id} were written to {path} on {socket.gethostname()}; "
            f"send them with: fovea runs sync {path}",
            flush=True,
        )
        self._metrics.clear()
        self._artifacts.clear()
        return path


def replay_fallback(path: str | Path, uri: str = "") -> dict[str, Any]:
    """Send a fallback file written by ``RunLogger.close`` to its run, then rename it ``*.sent``.

    Args:
        path: the ``<run_id>.jsonl`` file.
        uri: tracking URI ('' = the one recorded in the file).

    Returns:
        ``{"run_id", "tracking_uri", "metrics", "artifacts", "status"}``: what was sent.

    Raises:
        ValueError: a file that is not a fovea fallback file (one line).
    """
    from mlflow.entities import Metric

    path = Path(path)
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a fovea tracking fallback file ({err})") from None
    headers = [line for line in lines if "run_id" in line]
    if not headers:
        raise ValueError(f"{path}: not a fovea tracking fallback file (no header line)")
    run_id = headers[0]["run_id"]
    uri = uri or headers[0]["tracking_uri"]
    client = store.client(uri)
    metrics = [Metric(**line["metric"]) for line in lines if "metric" in line]
    for start in range(0, len(metrics), MAX_BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + MAX_BATCH])
    artifacts = [line for line in lines if "artifact" in line]
    for line in artifacts:
        if line["kind"] == "dict":
            client.log_dict(run_id, line["payload"], line["artifact"])
        else:
            client.log_figure(run_id, plot_curves(line["payload"]), line["artifact"])
    status = next((h["status"] for h in reversed(headers) if h.get("status")), None)
    if status:
        client.set_terminated(run_id, status)
    path.rename(path.with_name(path.name + ".sent"))
    return {
        "run_id": run_id,
        "tracking_uri": uri,
        "metrics": len(metrics),
        "artifacts": len(artifacts),
        "status": status,
    }


def fallback_file(run_id: str) -> Path:
    """Where this machine's ``RunLogger.close`` writes the unsent part of ``run_id`` (by default)."""
    from fovea.paths import fovea_home

    return fovea_home() / "tracking_fallback" / f"{run_id}.jsonl"
