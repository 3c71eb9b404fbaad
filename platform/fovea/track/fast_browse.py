"""A quick, read-only way to ``fovea runs list`` and ``fovea models list`` that never imports MLflow.

Importing MLflow and setting up its SQLAlchemy store take several seconds, the search itself milliseconds, so:

- a ``sqlite:///PATH`` store is read with the standard library's ``sqlite3`` (opened read-only), straight from
  MLflow's tables (``experiments``, ``runs``, ``latest_metrics``, ``params``, ``tags``, ``registered_models``,
  ``registered_model_tags``, ``registered_model_aliases``, ``model_versions``, ``model_version_tags``), and only for
  a run listing without a filter (MLflow's search grammar stays with MLflow);
- an ``http(s)://`` tracking server is asked through MLflow's REST API with ``urllib``, filter included.

Each function returns exactly what ``fovea.track.browse``'s function of the same name returns, or None when this
path cannot answer (another kind of store, a filter on SQLite, a schema it does not know, an HTTP error other than
401/403/404, TLS or auth settings only MLflow's client understands): the caller then asks MLflow. A store that
cannot be reached, or refuses the credentials, is a one-line ``ValueError``, as on MLflow's path.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from fovea.errors import first_line

ALL_EXPERIMENTS = "all"
DEFAULT_WORKSPACE = "default"
DELETED_VERSION_STAGE = "Deleted_Internal"  # MLflow's stage for a version being deleted: never listed
PAGE_SIZE = 1000
MAX_RUNS = 50000  # the most runs MLflow's search returns at once; beyond it MLflow's client says so
# MLflow client settings this path does not implement: with any of them set, MLflow's own client answers.
CLIENT_ONLY_SETTINGS = (
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "MLFLOW_TRACKING_AUTH",
    "MLFLOW_WORKSPACE",
)

log = logging.getLogger(__name__)


class _CannotAnswer(Exception):
    """This path cannot answer (schema, HTTP error, settings): MLflow's client should."""


# --- shared with browse.py -----------------------------------------------------------------------------------------


def iso_time(milliseconds: int | None) -> str | None:
    """An MLflow timestamp (ms since the epoch) as local ISO 8601 with the UTC offset, or None when unset."""
    if not milliseconds:
        return None
    return datetime.fromtimestamp(milliseconds / 1000).astimezone().isoformat(timespec="seconds")


def as_float(value: Any) -> float | None:
    """``value`` as a float, or None when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def latest_update(model_updated_ms: int | None, versions: list[dict[str, Any]]) -> str | None:
    """When a model or any of its versions last changed (a version's new tag leaves the model's own time)."""
    times = [time for time in [iso_time(model_updated_ms), *(v["updated"] for v in versions)] if time]
    return max(times, key=datetime.fromisoformat) if times else None


def run_record(
    info: dict[str, Any],
    metrics: dict[str, float],
    params: dict[str, str],
    tags: dict[str, str],
    experiment_name: str,
) -> dict[str, Any]:
    """One run as ``list_runs`` gives it; ``info`` holds ``run_id``, ``run_name``, ``experiment_id``, ``status``,
    ``start_time`` and ``end_time`` (ms)."""
    start, status = info["start_time"], info["status"]
    end = info["end_time"] or (datetime.now().timestamp() * 1000 if status == "RUNNING" else None)
    duration = (end - start) / 1000 if start and end else None
    epoch = metrics.get("epoch")
    return {
        "run_id": info["run_id"],
        "run_name": info["run_name"],
        "experiment": experiment_name,
        "experiment_id": info["experiment_id"],
        "status": status,
        "start": iso_time(start),
        "end": iso_time(info["end_time"]),
        "duration_s": duration,
        "role": tags.get("fovea.role"),
        "model": tags.get("fovea.model"),
        "epochs": int(epoch) if epoch is not None else None,
        "val_top1": metrics.get("val_top1"),
        "val_top5": metrics.get("val_top5"),
        "registered_version": tags.get("fovea.registered_version"),
        "metrics": metrics,
        "params": params,
        "tags": {key: value for key, value in tags.items() if not key.startswith("mlflow.")},
    }


def version_record(fields: dict[str, Any], tags: dict[str, str], aliases: Iterable[str] = ()) -> dict[str, Any]:
    """One model version as ``model_versions`` gives it; ``fields`` holds ``name``, ``version``,
    ``creation_timestamp``, ``last_updated_timestamp``, ``status``, ``run_id``, ``source``, ``description``."""
    return {
        "name": fields["name"],
        "version": str(fields["version"]),
        "aliases": sorted(aliases),
        "created": iso_time(fields["creation_timestamp"]),
        "updated": iso_time(fields["last_updated_timestamp"]),
        "status": fields["status"],
        "run_id": fields["run_id"],
        "source": fields["source"],
        "description": fields["description"] or "",
        "tags": tags,
    }


def model_row(model: dict[str, Any], aliases: dict[str, str], versions: list[dict[str, Any]]) -> dict[str, Any]:
    """One registered model as ``list_models`` gives it; ``model`` holds ``name``, ``description``, ``tags``,
    ``creation_timestamp`` and ``last_updated_timestamp``; ``versions`` newest first."""
    aliases = {alias: str(version) for alias, version in sorted(aliases.items())}
    for record in versions:
        record["aliases"] = sorted(alias for alias, version in aliases.items() if version == record["version"])
    champion = next((v for v in versions if v["version"] == aliases.get("champion")), None)
    return {
        "name": model["name"],
        "description": model["description"] or "",
        "tags": dict(model["tags"] or {}),
        "versions": len(versions),
        "latest_version": versions[0]["version"] if versions else None,
        "aliases": aliases,
        "champion_val_top1": as_float(champion["tags"].get("val_top1")) if champion else None,
        "created": iso_time(model["creation_timestamp"]),
        "updated": latest_update(model["last_updated_timestamp"], versions),
    }


def unknown_experiment(experiment: str, names: Iterable[str]) -> ValueError:
    """The error for an experiment that is not there, naming those that are."""
    known = ", ".join(sorted(names)) or "none"
    return ValueError(f"no experiment {experiment!r} (experiments: {known}; or --experiment all)")


# --- the two listings ----------------------------------------------------------------------------------------------


def list_runs(uri: str, *, experiment: str, limit: int, filter_string: str = "") -> list[dict[str, Any]] | None:
    """``browse.list_runs`` without MLflow, or None when this path cannot answer."""
    try:
        if limit > MAX_RUNS:
            raise _CannotAnswer(f"more than {MAX_RUNS} runs asked for")
        if uri.startswith("sqlite:///") and not filter_string:
            with _ReadOnlySqlite(uri) as store:
                return _SqliteStore(store).runs(experiment, limit)
        if uri.startswith(("http://", "https://")):
            return _RestStore(uri, "searching runs").runs(experiment, limit, filter_string)
    except (_CannotAnswer, sqlite3.Error, KeyError, TypeError, AttributeError) as err:  # not what it expects
        log.debug("listing runs at %s through MLflow's client: %s", uri, first_line(err))
    return None


def list_models(uri: str) -> list[dict[str, Any]] | None:
    """``browse.list_models`` without MLflow, or None when this path cannot answer."""
    try:
        if uri.startswith("sqlite:///"):
            with _ReadOnlySqlite(uri) as store:
                return _SqliteStore(store).models()
        if uri.startswith(("http://", "https://")):
            return _RestStore(uri, f"listing the registered models at {uri}").models()
    except (_CannotAnswer, sqlite3.Error, KeyError, TypeError, AttributeError) as err:  # not what it expects
        log.debug("listing models at %s through MLflow's client: %s", uri, first_line(err))
    return None


# --- SQLite --------------------------------------------------------------------------------------------------------


class _ReadOnlySqlite:
    """A read-only connection to the SQLite file of ``sqlite:///PATH``, closed on exit."""

    def __init__(self, uri: str) -> None:
        path = uri.removeprefix("sqlite:///")
        if "?" in path or os.environ.get("MLFLOW_WORKSPACE", "").strip():
            raise _CannotAnswer("URI options or a workspace: MLflow's client reads these")
        if not os.path.isfile(path):
            raise _CannotAnswer(f"{path} is not a file")
        self.connection = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True, timeout=10)

    def __enter__(self) -> sqlite3.Connection:
        return self.connection

    def __exit__(self, *exc: object) -> None:
        self.connection.close()


class _SqliteStore:
    """MLflow's tables, read as MLflow's SQL store reads them for these searches."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.db = connection
        self.columns: dict[str, set[str]] = {}

    def _workspace(self, table: str, alias: str = "") -> tuple[str, list[str]]:
        """`` AND workspace = 'default'`` for a table that has MLflow 3's workspace column."""
        if table not in self.columns:
            self.columns[table] = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            if not self.columns[table]:
                raise _CannotAnswer(f"no table {table}")
        if "workspace" not in self.columns[table]:
            return "", []
        return f" AND {alias + '.' if alias else ''}workspace = ?", [DEFAULT_WORKSPACE]

    def _experiments(self, experiment: str) -> dict[str, str]:
        where, args = self._workspace("experiments")
        active = dict(
            self.db.execute(
                f"SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = 'active'{where}", args
            ).fetchall()
        )
        if experiment == ALL_EXPERIMENTS:
            return {str(key): name for key, name in active.items()}
        found = {str(key): name for key, name in active.items() if name == experiment}
        if not found:
            raise unknown_experiment(experiment, active.values())
        return found

    def _by_run(self, table: str, run_ids: list[str], columns: str) -> dict[str, list[tuple[Any, ...]]]:
        found: dict[str, list[tuple[Any, ...]]] = {run_id: [] for run_id in run_ids}
        for start in range(0, len(run_ids), 500):
            chunk = run_ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            query = f"SELECT run_uuid, {columns} FROM {table} WHERE run_uuid IN ({marks})"
            for run_id, *rest in self.db.execute(query, chunk):
                found[run_id].append(tuple(rest))
        return found

    def runs(self, experiment: str, limit: int) -> list[dict[str, Any]]:
        experiments = self._experiments(experiment)
        if not experiments:
            return []
        marks = ", ".join("?" * len(experiments))
        # MLflow's order for ``attributes.start_time DESC``: unset times last, then the run id
        rows = self.db.execute(
            "SELECT run_uuid, name, experiment_id, status, start_time, end_time FROM runs "
            f"WHERE lifecycle_stage = 'active' AND experiment_id IN ({marks}) "
            "ORDER BY start_time IS NULL, start_time DESC, run_uuid LIMIT ?",
            [*(int(key) for key in experiments), limit],
        ).fetchall()
        run_ids = [row[0] for row in rows]
        metrics = self._by_run("latest_metrics", run_ids, "key, value, is_nan")
        params = self._by_run("params", run_ids, "key, value")
        tags = self._by_run("tags", run_ids, "key, value")
        registered = self._registered_versions(run_ids)
        records = []
        for run_id, name, experiment_id, status, start, end in rows:
            info = {"run_id": run_id, "run_name": name, "experiment_id": str(experiment_id), "status": status}
            info.update(start_time=start, end_time=end)
            run_metrics = {key: float("nan") if is_nan else value for key, value, is_nan in metrics[run_id]}
            record = run_record(
                info, run_metrics, dict(params[run_id]), dict(tags[run_id]), experiments[str(experiment_id)]
            )
            record["registered_version"] = registered.get(run_id, record["registered_version"])
            records.append(record)
        return records

    def _registered_versions(self, run_ids: list[str]) -> dict[str, str]:
        """``{run id: "NAME/VERSION"}``, the last of a run's versions in MLflow's default order winning, as in
        ``browse``'s search through MLflow."""
        where, args = self._workspace("model_versions")
        found: dict[str, str] = {}
        for start in range(0, len(run_ids), 500):
            chunk = run_ids[start : start + 500]
            query = (
                f"SELECT run_id, name, version FROM model_versions WHERE run_id IN ({', '.join('?' * len(chunk))}) "
                f"AND (current_stage IS NULL OR current_stage != ?){where} "
                "ORDER BY last_updated_time DESC, name, version DESC"
            )
            for run_id, name, version in self.db.execute(query, [*chunk, DELETED_VERSION_STAGE, *args]):
                found[run_id] = f"{name}/{version}"
        return found

    def _grouped(self, query: str, args: list[Any]) -> dict[Any, dict[str, Any]]:
        """``{group: {key: value}}`` from rows ``(group..., key, value)``."""
        found: dict[Any, dict[str, Any]] = {}
        for *group, key, value in self.db.execute(query, args):
            found.setdefault(group[0] if len(group) == 1 else tuple(group), {})[key] = value
        return found

    def models(self) -> list[dict[str, Any]]:
        where, args = self._workspace("registered_models")
        models = self.db.execute(
            f"SELECT name, description, creation_time, last_updated_time FROM registered_models WHERE 1 = 1{where} "
            "ORDER BY name",
            args,
        ).fetchall()
        tag_where, tag_args = self._workspace("registered_model_tags")
        tags = self._grouped(f"SELECT name, key, value FROM registered_model_tags WHERE 1 = 1{tag_where}", tag_args)
        alias_where, alias_args = self._workspace("registered_model_aliases")
        aliases = self._grouped(
            f"SELECT name, alias, version FROM registered_model_aliases WHERE 1 = 1{alias_where}", alias_args
        )
        version_where, version_args = self._workspace("model_version_tags")
        version_tags = self._grouped(
            f"SELECT name, version, key, value FROM model_version_tags WHERE 1 = 1{version_where}", version_args
        )
        versions: dict[str, list[dict[str, Any]]] = {}
        mv_where, mv_args = self._workspace("model_versions")
        for name, version, created, updated, status, run_id, source, description in self.db.execute(
            "SELECT name, version, creation_time, last_updated_time, status, run_id, source, description "
            f"FROM model_versions WHERE (current_stage IS NULL OR current_stage != ?){mv_where} "
            "ORDER BY name, version DESC",
            [DELETED_VERSION_STAGE, *mv_args],
        ):
            fields = {"name": name, "version": version, "creation_timestamp": created, "status": status}
            fields.update(last_updated_timestamp=updated, run_id=run_id, source=source, description=description)
            versions.setdefault(name, []).append(version_record(fields, version_tags.get((name, version), {})))
        rows = []
        for name, description, created, updated in models:
            model = {"name": name, "description": description, "tags": tags.get(name, {})}
            model.update(creation_timestamp=created, last_updated_timestamp=updated)
            rows.append(model_row(model, aliases.get(name, {}), versions.get(name, [])))
        return rows


# --- a tracking server's REST API ----------------------------------------------------------------------------------


def _pairs(items: list[dict[str, Any]] | None, key: str = "key", value: str = "value") -> dict[str, Any]:
    """MLflow's JSON ``[{"key": k, "value": v}, ...]`` as ``{k: v}``."""
    return {item[key]: item.get(value) for item in items or []}


def _number(value: Any) -> int | None:
    """An int64 field of MLflow's JSON (a number, or a string of one), None when unset."""
    return int(value) if value not in (None, "") else None


class _RestStore:
    """MLflow's REST API (``/api/2.0/mlflow/...``) with urllib, credentials from MLflow's environment variables."""

    def __init__(self, uri: str, context: str) -> None:
        if any(os.environ.get(name, "").strip() for name in CLIENT_ONLY_SETTINGS):
            raise _CannotAnswer("TLS, auth or workspace settings that only MLflow's client reads")
        self.base = uri.rstrip("/") + "/api/2.0/mlflow/"
        self.context = context
        self.timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or 120)
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        elif user and password:
            self.headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def call(self, endpoint: str, query: dict[str, Any] | None = None, body: dict[str, Any] | None = None) -> Any:
        """The JSON answer of ``endpoint`` (GET with ``query``, or POST ``body``); None for a 404."""
        url = self.base + endpoint
        query_text = "?" + urllib.parse.urlencode(query, doseq=True) if query else ""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            url + query_text, data=data, headers=self.headers, method="POST" if data else "GET"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - http(s) only
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            if err.code in (401, 403):
                raise ValueError(f"{self.context}: API request to {url} failed: HTTP {err.code} {err.reason}") from None
            raise _CannotAnswer(f"HTTP {err.code} from {url}") from None
        except (urllib.error.URLError, OSError) as err:  # refused, unknown host, timed out
            reason = getattr(err, "reason", err)
            raise ValueError(f"{self.context}: API request to {url} failed with exception {reason}") from None
        except ValueError as err:  # not JSON: not an MLflow server answering
            raise _CannotAnswer(f"{url}: {first_line(err)}") from None

    def paged(self, endpoint: str, field: str, query: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every item of a paged GET search."""
        token = None
        while True:
            page = self.call(endpoint, {**query, **({"page_token": token} if token else {})})
            if page is None:
                raise ValueError(f"{self.context}: {self.base}{endpoint}: not found (HTTP 404)")
            yield from page.get(field, [])
            token = page.get("next_page_token")
            if not token:
                return

    def _experiments(self, experiment: str) -> dict[str, str]:
        if experiment != ALL_EXPERIMENTS:
            found = self.call("experiments/get-by-name", {"experiment_name": experiment})
            found = (found or {}).get("experiment")
            if found and found.get("lifecycle_stage", "active") == "active":
                return {str(found["experiment_id"]): found["name"]}
        listed = self.paged("experiments/search", "experiments", {"max_results": PAGE_SIZE})
        active = {str(e["experiment_id"]): e["name"] for e in listed if e.get("lifecycle_stage", "active") == "active"}
        if experiment == ALL_EXPERIMENTS:
            return active
        raise unknown_experiment(experiment, active.values())

    def runs(self, experiment: str, limit: int, filter_string: str) -> list[dict[str, Any]]:
        experiments = self._experiments(experiment)
        if not experiments:
            return []
        body = {"experiment_ids": list(experiments), "filter": filter_string, "max_results": limit}
        body.update(order_by=["attributes.start_time DESC"], run_view_type="ACTIVE_ONLY")
        found = self.call("runs/search", body=body)
        if found is None:
            raise ValueError(f"{self.context}: {self.base}runs/search: not found (HTTP 404)")
        records = []
        for run in found.get("runs", []):
            info, data = run.get("info", {}), run.get("data", {})
            fields = {key: info.get(key) for key in ("run_id", "run_name", "status")}
            fields["experiment_id"] = str(info.get("experiment_id"))
            fields.update(start_time=_number(info.get("start_time")), end_time=_number(info.get("end_time")))
            metrics = {key: float(value) for key, value in _pairs(data.get("metrics")).items()}
            params, tags = _pairs(data.get("params")), _pairs(data.get("tags"))
            records.append(run_record(fields, metrics, params, tags, experiments.get(fields["experiment_id"], "")))
        registered = self._registered_versions([record["run_id"] for record in records])
        for record in records:
            record["registered_version"] = registered.get(record["run_id"], record["registered_version"])
        return records

    def _registered_versions(self, run_ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(run_ids), 100):
            chunk = ", ".join(quoted(run_id) for run_id in run_ids[start : start + 100])
            for version in self.paged("model-versions/search", "model_versions", {"filter": f"run_id IN ({chunk})"}):
                found[version["run_id"]] = f"{version['name']}/{version['version']}"
        return found

    def _versions(self, name: str) -> list[dict[str, Any]]:
        query = {"filter": f"name = {quoted(name)}", "max_results": PAGE_SIZE, "order_by": ["version_number DESC"]}
        records = []
        for version in self.paged("model-versions/search", "model_versions", query):
            fields = {key: version.get(key) for key in ("name", "version", "status", "run_id", "source")}
            fields.update(description=version.get("description"), version=str(version.get("version")))
            fields["creation_timestamp"] = _number(version.get("creation_timestamp"))
            fields["last_updated_timestamp"] = _number(version.get("last_updated_timestamp"))
            records.append(version_record(fields, _pairs(version.get("tags"))))
        return sorted(records, key=lambda record: -int(record["version"]))

    def models(self) -> list[dict[str, Any]]:
        rows = []
        found = self.paged("registered-models/search", "registered_models", {"max_results": PAGE_SIZE})
        for model in sorted(found, key=lambda m: m["name"]):
            fields = {"name": model["name"], "description": model.get("description"), "tags": _pairs(model.get("tags"))}
            fields["creation_timestamp"] = _number(model.get("creation_timestamp"))
            fields["last_updated_timestamp"] = _number(model.get("last_updated_timestamp"))
            aliases = _pairs(model.get("aliases"), "alias", "version")
            rows.append(model_row(fields, aliases, self._versions(model["name"])))
        return rows


def quoted(value: str) -> str:
    """``value`` as a single-quoted literal for an MLflow filter string."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
