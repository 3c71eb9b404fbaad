"""The model registry's workflow: the ``challenger`` alias on every new version, and the ``champion`` alias moved
only by the promotion rule (``track.promote``) or by hand (``fovea models promote``)."""

from __future__ import annotations

from typing import Any

from fovea.errors import first_line
from fovea.track import store


def _same_dataset(tags: dict[str, str], dataset: str, manifest_hash: str) -> bool:
    """Two models were trained on the same data: equal manifest hashes, or (for versions that record none) paths."""
    if manifest_hash and tags.get("manifest_hash"):
        return tags["manifest_hash"] == manifest_hash
    return tags.get("dataset") == dataset


def champion_decision(
    uri: str,
    name: str,
    alias: str,
    *,
    dataset: str,
    score: float,
    metric: str,
    mode: str,
    policy: str,
    version: str | None = None,
    min_delta: float = 0.0,
    manifest_hash: str = "",
) -> tuple[bool, str]:
    """Whether a new model takes ``alias``, and why (one line for the console and the run's tags).

    ``if_better`` takes the alias when ``name`` has no holder of it yet, or when ``score`` beats the holder's own
    ``metric`` tag by more than ``min_delta``, and only when the holder was trained on the same dataset (the same
    manifest hash): a champion of other data is never replaced by this rule. ``always`` and ``never`` say it.
    """
    from mlflow.exceptions import MlflowException

    if not alias or policy == "never":
        return False, "champion left as it is (track.promote=never or track.champion_alias='')"
    if policy == "always":
        return True, f"{alias} set (track.promote=always)"
    try:
        current = store.client(uri).get_model_version_by_alias(name, alias)
    except MlflowException:
        return True, f"{name} had no {alias}: this model takes it"
    if version is not None and str(current.version) == str(version):
        return False, f"version {version} is already {alias}"
    if not _same_dataset(current.tags, dataset, manifest_hash):
        other = current.tags.get("dataset")
        return False, f"{alias} is version {current.version}, trained on another dataset ({other}); left as it is"
    theirs = current.tags.get(metric)
    if theirs is None:
        return False, f"{alias} version {current.version} records no {metric}; not compared"
    gain = score - float(theirs) if mode == "max" else float(theirs) - score
    better = gain > min_delta
    verdict = "beats" if better else "does not beat"
    margin = f" by more than {min_delta:g}" if min_delta else ""
    return better, f"{metric} {score:.2f} {verdict} {alias} version {current.version} ({float(theirs):.2f}){margin}"


def promote_new_version(
    uri: str,
    name: str,
    version: str,
    *,
    score: float,
    metric: str,
    mode: str = "max",
    policy: str,
    champion_alias: str,
    challenger_alias: str,
    min_delta: float = 0.0,
    dataset: str,
    manifest_hash: str = "",
) -> tuple[bool, str]:
    """Point ``challenger_alias`` at a newly registered version, then ``champion_alias`` when the rule says so.

    Returns:
        ``(promoted, line)``: whether the version became the champion, and a sentence saying what happened.
    """
    if challenger_alias:
        set_alias(uri, name, challenger_alias, version)
    promoted, why = champion_decision(
        uri,
        name,
        champion_alias,
        dataset=dataset,
        score=score,
        metric=metric,
        mode=mode,
        policy=policy,
        version=version,
        min_delta=min_delta,
        manifest_hash=manifest_hash,
    )
    if promoted:
        set_alias(uri, name, champion_alias, version)
        why += f": {name}@{champion_alias} -> version {version}"
    client = store.client(uri)
    client.set_model_version_tag(name, version, "promotion", why)
    return promoted, why


def set_alias(uri: str, name: str, alias: str, version: str) -> str | None:
    """Point ``name@alias`` at ``version``; returns the version that held the alias before (None if none)."""
    from mlflow.exceptions import MlflowException

    client = store.client(uri)
    try:
        previous: str | None = str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        previous = None
    client.set_registered_model_alias(name, alias, str(version))
    return previous


def registered_version_of_run(uri: str, name: str, run_id: str) -> str | None:
    """The version of ``name`` registered from ``run_id``, if any (rerunning a finished sweep registers nothing)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = store.client(uri).search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException as err:
        print(f"warning: could not search the registry ({first_line(err)})")
        return None
    return str(max(int(v.version) for v in versions)) if versions else None


def alias_exists(uri: str, name: str, alias: str) -> bool:
    """Whether the registry at ``uri`` has ``name@alias``."""
    from mlflow.exceptions import MlflowException

    try:
        store.client(uri).get_model_version_by_alias(name, alias)
        return True
    except MlflowException:
        return False


def version_tags(values: dict[str, Any]) -> dict[str, str]:
    """Registry tags as strings, leaving out the ones with no value."""
    return {key: str(value) for key, value in values.items() if value is not None and value != ""}
