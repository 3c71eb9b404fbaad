"""Read-only views of a tracking store and model registry for the ``fovea`` command, plus its two writes (moving an
alias by hand, downloading a version's files).

Every function returns plain dicts and lists (times as ISO 8601 strings in local time) and turns MLflow's errors
into one-line ``ValueError``s, so the command line never needs to import MLflow.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from fovea.errors import first_line
from fovea.track import fast_browse, store
from fovea.track.fast_browse import iso_time, latest_update, model_row, quoted, run_record, version_record
from fovea.track.run_logger import replay_fallback

ALL_EXPERIMENTS = "all"
MIN_RUN_PREFIX = 6
RUN_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
PAGE_SIZE = 1000

_Result = TypeVar("_Result")


def _mlflow_errors_as_value_errors(call: Callable[[], _Result], context: str) -> _Result:
    """``call()``, with an ``MlflowException`` raised as a one-line ``ValueError`` that starts with ``context``."""
    from mlflow.exceptions import MlflowException

    try:
        return call()
    except MlflowException as err:
        raise ValueError(f"{context}: {first_line(err)}") from None


def _paged(search: Callable[[str | None], Any]) -> Iterator[Any]:
    """Every item of a paged MLflow search; ``search(page_token)`` returns one page (a ``PagedList``)."""
    token: str | None = None
    while True:
        page = search(token)
        yield from page
        token = page.token
        if not token:
            return


# --- the model registry ------------------------------------------------------------------------------------------


def _version_record(version: Any) -> dict[str, Any]:
    """One ``ModelVersion`` as a plain dict."""
    fields = {key: getattr(version, key) for key in ("name", "version", "status", "run_id", "source", "description")}
    fields.update(creation_timestamp=version.creation_timestamp, last_updated_timestamp=version.last_updated_timestamp)
    return version_record(fields, dict(version.tags or {}), version.aliases or [])


def _versions_of(client: Any, name: str, aliases: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every version of registered model ``name``, newest first, with their aliases.

    ``search_model_versions`` leaves the versions' aliases out (the SQL store fills them only in
    ``get_model_version``), so they come from the registered model's ``{alias: version}`` (``aliases``, or fetched).
    """
    if aliases is None:
        aliases = client.get_registered_model(name).aliases or {}
    found = _paged(
        lambda token: client.search_model_versions(
            f"name = {quoted(name)}", max_results=PAGE_SIZE, order_by=["version_number DESC"], page_token=token
        )
    )
    records = sorted((_version_record(v) for v in found), key=lambda record: -int(record["version"]))
    for record in records:
        record["aliases"] = sorted(alias for alias, version in aliases.items() if str(version) == record["version"])
    return records


def _registered_model(client: Any, name: str) -> Any:
    """The ``RegisteredModel`` called ``name``; a one-line ``ValueError`` naming the models there are if none."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise ValueError(f"registered model {name!r}: {first_line(err)}") from None
    names = sorted(model.name for model in _paged(lambda token: client.search_registered_models(page_token=token)))
    known = f"registered models: {', '.join(names)}" if names else "the registry has no models yet"
    raise ValueError(f"no registered model {name!r} ({known})")


def _latest_update(model: Any, versions: list[dict[str, Any]]) -> str | None:
    """When the model or any of its versions last changed (a version's new tag leaves the model's own time)."""
    return latest_update(model.last_updated_timestamp, versions)


def list_models(uri: str) -> list[dict[str, Any]]:
    """Every registered model, by name: its version count, latest version, aliases and champion's ``val_top1``.

    Returns:
        One dict per model: ``name``, ``description``, ``tags``, ``versions`` (count), ``latest_version``,
        ``aliases`` (``{alias: version}``), ``champion_val_top1`` (float or None), ``created``, ``updated``.
    """
    fast = fast_browse.list_models(uri)  # SQLite or a tracking server, without importing MLflow
    if fast is not None:
        return fast
    client = store.client(uri)

    def collect() -> list[dict[str, Any]]:
        rows = []
        models = _paged(lambda token: client.search_registered_models(max_results=PAGE_SIZE, page_token=token))
        for model in sorted(models, key=lambda m: m.name):
            aliases = {alias: str(version) for alias, version in (model.aliases or {}).items()}
            fields = {"name": model.name, "description": model.description, "tags": dict(model.tags or {})}
            fields.update(
                creation_timestamp=model.creation_timestamp, last_updated_timestamp=model.last_updated_timestamp
            )
            rows.append(model_row(fields, aliases, _versions_of(client, model.name, aliases)))
        return rows

    return _mlflow_errors_as_value_errors(collect, f"listing the registered models at {uri}")


def model_versions(uri: str, name: str) -> list[dict[str, Any]]:
    """Every version of registered model ``name``, newest first (see ``model_version``'s fields).

    Raises:
        ValueError: no such model (one line).
    """
    client = store.client(uri)
    aliases = _registered_model(client, name).aliases or {}
    return _mlflow_errors_as_value_errors(lambda: _versions_of(client, name, aliases), f"versions of {name!r}")


def model_details(uri: str, name: str) -> dict[str, Any]:
    """Registered model ``name``: description, tags, aliases, and its champion's (else latest) version in full.

    Returns:
        ``name``, ``description``, ``tags``, ``aliases`` (``{alias: version}``), ``created``, ``updated``,
        ``versions`` (count), ``latest_version``, ``shown`` (``"champion"`` or ``"latest"``) and ``version`` (the
        version's dict, or None for a model without versions).

    Raises:
        ValueError: no such model (one line).
    """
    client = store.client(uri)
    model = _registered_model(client, name)
    aliases = {alias: str(version) for alias, version in sorted((model.aliases or {}).items())}
    versions = _mlflow_errors_as_value_errors(lambda: _versions_of(client, name, aliases), f"versions of {name!r}")
    champion = next((v for v in versions if v["version"] == aliases.get("champion")), None)
    return {
        "name": model.name,
        "description": model.description or "",
        "tags": dict(model.tags or {}),
        "aliases": aliases,
        "created": iso_time(model.creation_timestamp),
        "updated": _latest_update(model, versions),
        "versions": len(versions),
        "latest_version": versions[0]["version"] if versions else None,
        "shown": "champion" if champion else "latest",
        "version": champion or (versions[0] if versions else None),
    }


def model_version(uri: str, name: str, *, version: str | None = None, alias: str | None = None) -> dict[str, Any]:
    """One version of ``name``, by number or by alias.

    Returns:
        ``name``, ``version``, ``aliases``, ``created``, ``updated``, ``status``, ``run_id``, ``source``,
        ``description``, ``tags``.

    Raises:
        ValueError: no such model, version or alias (one line that says which ones there are).
    """
    from mlflow.exceptions import MlflowException

    client = store.client(uri)
    model = _registered_model(client, name)
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException:
        if alias:
            aliases = ", ".join(f"{a}={v}" for a, v in sorted((model.aliases or {}).items())) or "none"
            raise ValueError(f"{name!r} has no alias {alias!r} (aliases: {aliases})") from None
        numbers = [v["version"] for v in _versions_of(client, name, {})]
        known = f"versions: {', '.join(reversed(numbers))}" if numbers else "it has no versions"
        raise ValueError(f"{name!r} has no version {version!r} ({known})") from None
    return _version_record(found)


def promote(uri: str, name: str, version: str, alias: str, *, user: str) -> str | None:
    """Point ``name@alias`` at ``version`` by hand, recording who did it and when as version tags
    (``promoted_by``, ``promoted_at``, ``promoted_alias``).

    Returns:
        The version that held the alias before (None when none did).

    Raises:
        ValueError: no such model or version, or an alias MLflow refuses (one line).
    """
    from fovea.track.registry import set_alias

    model_version(uri, name, version=version)  # a clear error for an unknown model or version
    previous = _mlflow_errors_as_value_errors(
        lambda: set_alias(uri, name, alias, version), f"cannot set {name}@{alias}"
    )
    client = store.client(uri)
    stamp = datetime.now().astimezone().isoformat(timespec="seconds")
    for key, value in (("promoted_by", user), ("promoted_at", stamp), ("promoted_alias", alias)):
        client.set_model_version_tag(name, version, key, value)
    return previous


def download_model_files(uri: str, name: str, version: str, destination: str | Path) -> Path:
    """Download the files of registered ``name`` version ``version`` (``MLmodel``, weights, environment) as they
    were registered, into ``destination`` (created).

    Raises:
        ValueError: the registry or artifact store would not give them (one line).
    """
    import mlflow

    # A progress bar per download is noise on the command line.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    store.use_store(uri)
    downloaded = _mlflow_errors_as_value_errors(
        lambda: mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=destination),
        f"downloading {name} version {version}",
    )
    return Path(downloaded)


# --- runs ----------------------------------------------------------------------------------------------------------


def _experiments(client: Any, experiment: str) -> dict[str, str]:
    """``{experiment id: name}`` for ``experiment`` (a name, or ``all``); a one-line ``ValueError`` if unknown."""
    if experiment == ALL_EXPERIMENTS:
        return {e.experiment_id: e.name for e in _paged(lambda token: client.search_experiments(page_token=token))}
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage != "active":
        names = sorted(e.name for e in _paged(lambda token: client.search_experiments(page_token=token)))
        raise fast_browse.unknown_experiment(experiment, names)
    return {found.experiment_id: found.name}


def _run_record(run: Any, experiment_name: str) -> dict[str, Any]:
    """One ``Run`` as a plain dict, with fovea's tags and metrics lifted out."""
    info, data = run.info, run.data
    fields = {key: getattr(info, key) for key in ("run_id", "run_name", "experiment_id", "status")}
    fields.update(start_time=info.start_time, end_time=info.end_time)
    return run_record(fields, dict(data.metrics), dict(data.params), dict(data.tags), experiment_name)


def _registered_versions_of_runs(client: Any, run_ids: list[str]) -> dict[str, str]:
    """``{run id: "NAME/VERSION"}`` for the runs among ``run_ids`` that registered a model version."""
    found: dict[str, str] = {}
    for start in range(0, len(run_ids), 100):
        chunk = ", ".join(quoted(run_id) for run_id in run_ids[start : start + 100])
        for version in _paged(
            lambda token, c=chunk: client.search_model_versions(f"run_id IN ({c})", page_token=token)
        ):
            found[version.run_id] = f"{version.name}/{version.version}"
    return found


def list_runs(uri: str, *, experiment: str = "fovea", limit: int = 50, filter_string: str = "") -> list[dict[str, Any]]:
    """The newest ``limit`` runs of ``experiment`` (``all``: of every experiment), newest first.

    Args:
        uri: tracking URI.
        experiment: an experiment name, or ``all``.
        limit: the most runs returned.
        filter_string: an MLflow search filter, e.g. ``"metrics.val_top1 > 90 and tags.`fovea.role` = 'train'"``.

    Returns:
        One dict per run: ``run_id``, ``run_name``, ``experiment``, ``status``, ``start``, ``end``, ``duration_s``,
        ``role``, ``model``, ``epochs`` (the last ``epoch`` metric), ``val_top1``, ``val_top5``,
        ``registered_version`` (``NAME/VERSION`` when the run registered one, or the run's
        ``fovea.registered_version`` tag), and all ``metrics``, ``params`` and ``tags``.

    Raises:
        ValueError: an unknown experiment or a filter MLflow rejects (one line).
    """
    fast = fast_browse.list_runs(uri, experiment=experiment, limit=limit, filter_string=filter_string)
    if fast is not None:  # SQLite without a filter, or a tracking server: without importing MLflow
        return fast
    client = store.client(uri)

    def collect() -> list[dict[str, Any]]:
        experiments = _experiments(client, experiment)
        if not experiments:
            return []
        runs = client.search_runs(
            list(experiments),
            filter_string=filter_string,
            max_results=limit,
            order_by=["attributes.start_time DESC"],
        )
        records = [_run_record(run, experiments.get(run.info.experiment_id, "")) for run in runs]
        registered = _registered_versions_of_runs(client, [record["run_id"] for record in records])
        for record in records:
            record["registered_version"] = registered.get(record["run_id"], record["registered_version"])
        return records

    return _mlflow_errors_as_value_errors(collect, "searching runs")


def find_run(uri: str, reference: str, *, experiment: str = ALL_EXPERIMENTS) -> dict[str, Any]:
    """The run that ``reference`` names: a full run id, a unique prefix of at least 6 characters, or a unique run
    name, within ``experiment`` (``all``: every experiment). Fields as in ``list_runs``.

    Raises:
        ValueError: no run, or more than one, matches (one line).
    """
    from mlflow.exceptions import MlflowException

    client = store.client(uri)
    if RUN_ID_PATTERN.match(reference):
        try:
            run = client.get_run(reference)
        except MlflowException:
            raise ValueError(f"no run {reference} in the store at {uri}") from None
        return _run_record(run, client.get_experiment(run.info.experiment_id).name)

    experiments = _experiments(client, experiment)
    where = f"experiment {experiment!r}" if experiment != ALL_EXPERIMENTS else "any experiment"
    matches: list[Any] = []
    if len(reference) >= MIN_RUN_PREFIX and re.fullmatch(r"[0-9a-f]+", reference):
        matches = _mlflow_errors_as_value_errors(
            lambda: client.search_runs(
                list(experiments), filter_string=f"attributes.run_id LIKE '{reference}%'", max_results=10
            ),
            "searching runs",
        )
    if not matches:  # a run name, as `fovea runs list` shows it
        matches = _mlflow_errors_as_value_errors(
            lambda: client.search_runs(
                list(experiments), filter_string=f"attributes.run_name = {quoted(reference)}", max_results=10
            ),
            "searching runs",
        )
    if not matches:
        hint = (
            f" (a run id prefix needs at least {MIN_RUN_PREFIX} characters)" if len(reference) < MIN_RUN_PREFIX else ""
        )
        raise ValueError(f"no run id or run name matches {reference!r} in {where}{hint}")
    if len(matches) > 1:
        shown = ", ".join(f"{run.info.run_id[:8]} ({run.info.run_name})" for run in matches[:5])
        raise ValueError(f"{reference!r} matches {len(matches)} runs in {where}: {shown}; give more of the run id")
    return _run_record(matches[0], experiments.get(matches[0].info.experiment_id, ""))


def sync_fallback(path: str | Path, uri: str = "") -> dict[str, Any]:
    """Replay a tracking fallback file (see ``replay_fallback``), with MLflow's errors as one-line ``ValueError``s.

    Returns:
        ``{"run_id", "tracking_uri", "metrics", "artifacts", "status"}``: what was sent.
    """
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such file")
    return _mlflow_errors_as_value_errors(lambda: replay_fallback(path, uri), f"{path}: not sent")
