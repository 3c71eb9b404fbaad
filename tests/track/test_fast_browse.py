"""The MLflow-free listings (``fovea.track.fast_browse``) give exactly what MLflow's client gives."""

from __future__ import annotations

import json
import sqlite3
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from fovea.track import browse, fast_browse

NAME = "tiny-vit"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """Runs in two experiments with fovea's tags, params and metrics (one run registering two versions, one still
    running, one deleted), a model with tagged versions and aliases, and a model without versions."""
    root = tmp_path_factory.mktemp("fast_browse")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    fovea_id, other_id = client.create_experiment("fovea"), client.create_experiment("other")
    run_ids = []
    for index in range(4):
        run = client.create_run(
            fovea_id if index < 3 else other_id,
            run_name=f"run-{index}",
            start_time=1_700_000_000_000 + index * 1000,
            tags={"fovea.role": "train", "fovea.model": "vit_micro_patch4_32", "fovea.git_commit": "a" * 40},
        )
        run_id = run.info.run_id
        client.log_param(run_id, "optim.lr", 0.001 * (index + 1))
        for epoch in (1, 2):
            client.log_metric(run_id, "epoch", epoch, step=epoch)
            client.log_metric(run_id, "val_top1", 50.0 + index + epoch, step=epoch)
        if index != 2:
            client.set_terminated(run_id, end_time=1_700_000_100_000 + index)
        run_ids.append(run_id)
    client.set_tag(run_ids[1], "fovea.registered_version", "from-a-tag/9")
    deleted = client.create_run(fovea_id, run_name="deleted").info.run_id
    client.delete_run(deleted)
    client.create_registered_model(NAME, tags={"task": "images"}, description="a tiny ViT")
    for top1 in ("81.25", "90.50"):
        client.create_model_version(NAME, "file:///nowhere", run_id=run_ids[0], tags={"val_top1": top1})
    client.set_registered_model_alias(NAME, "champion", "2")
    client.set_registered_model_alias(NAME, "challenger", "1")
    client.set_model_version_tag(NAME, "1", "note", "later")
    client.create_registered_model("empty-model")
    return uri


def _through_mlflow(monkeypatch, call: Any, *args: Any, **kwargs: Any) -> Any:
    """``call`` with the fast path switched off: MLflow's client answers."""
    with monkeypatch.context() as patched:
        patched.setattr(fast_browse, "list_runs", lambda *a, **k: None)
        patched.setattr(fast_browse, "list_models", lambda *a, **k: None)
        return call(*args, **kwargs)


def _steady(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with a running run's duration (it grows while the test runs) rounded to minutes."""
    return [{**row, "duration_s": round(row["duration_s"] / 60) if row["duration_s"] else None} for row in rows]


@pytest.mark.parametrize(("experiment", "limit"), [("fovea", 50), ("all", 50), ("all", 2)])
def test_sqlite_runs_match_mlflow(store, monkeypatch, experiment, limit):
    fast = fast_browse.list_runs(store, experiment=experiment, limit=limit)
    slow = _through_mlflow(monkeypatch, browse.list_runs, store, experiment=experiment, limit=limit)
    assert fast is not None and len(fast) == min(limit, 4 if experiment == "all" else 3)
    assert _steady(fast) == _steady(slow)
    if limit == 50:
        by_name = {row["run_name"]: row for row in fast}
        assert by_name["run-0"]["registered_version"].startswith(f"{NAME}/")  # the registry beats a run's tag
        assert by_name["run-1"]["registered_version"] == "from-a-tag/9"
        assert by_name["run-0"]["epochs"] == 2 and by_name["run-0"]["val_top1"] == 52.0
        assert "deleted" not in by_name


def test_sqlite_models_match_mlflow(store, monkeypatch):
    fast = fast_browse.list_models(store)
    assert fast == _through_mlflow(monkeypatch, browse.list_models, store)
    assert [(m["name"], m["versions"], m["latest_version"], m["champion_val_top1"]) for m in fast] == [
        ("empty-model", 0, None, None),
        (NAME, 2, "2", 90.5),
    ]
    assert fast[1]["aliases"] == {"challenger": "1", "champion": "2"} and fast[1]["tags"] == {"task": "images"}


def test_sqlite_unknown_experiment_is_one_line(store, monkeypatch):
    with pytest.raises(ValueError) as fast:
        fast_browse.list_runs(store, experiment="nope", limit=5)
    with pytest.raises(ValueError) as slow:
        _through_mlflow(monkeypatch, browse.list_runs, store, experiment="nope", limit=5)
    assert (
        str(fast.value)
        == str(slow.value)
        == "no experiment 'nope' (experiments: Default, fovea, other; or --experiment all)"
    )


def test_filter_and_unknown_schema_go_to_mlflow(store, tmp_path):
    assert fast_browse.list_runs(store, experiment="fovea", limit=5, filter_string="metrics.val_top1 > 1") is None
    old = tmp_path / "old.db"  # a store whose tables this path does not know
    with sqlite3.connect(old) as db:
        db.execute("CREATE TABLE experiments (experiment_id INTEGER, name TEXT)")
    assert fast_browse.list_runs(f"sqlite:///{old}", experiment="fovea", limit=5) is None
    assert fast_browse.list_models(f"sqlite:///{old}") is None
    assert fast_browse.list_models("file:///somewhere/mlruns") is None


# --- a tracking server ---------------------------------------------------------------------------------------------


def _server_answers(store: str) -> dict[str, Any]:
    """What an MLflow server over ``store`` answers, built from MLflow's own entities' JSON (``to_proto``)."""
    from google.protobuf.json_format import MessageToDict

    client = MlflowClient(store, registry_uri=store)

    def as_json(entity: Any) -> dict[str, Any]:
        return MessageToDict(entity.to_proto(), preserving_proto_field_name=True)

    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments], order_by=["attributes.start_time DESC"])
    models = client.search_registered_models()
    versions = client.search_model_versions()
    return {
        "experiments": [as_json(e) for e in experiments],
        "runs": [as_json(r) for r in runs],
        "registered_models": [as_json(m) for m in models],
        "model_versions": [as_json(v) for v in versions],
    }


class _FakeServer(BaseHTTPRequestHandler):
    answers: dict[str, Any] = {}
    seen: list[tuple[str, str, str | None]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(url.query)
        self.seen.append(("GET", url.path, self.headers.get("Authorization")))
        answers = self.answers
        if url.path.endswith("/experiments/get-by-name"):
            found = [e for e in answers["experiments"] if e["name"] == query["experiment_name"][0]]
            if not found:
                return self._answer(404, {"error_code": "RESOURCE_DOES_NOT_EXIST"})
            return self._answer(200, {"experiment": found[0]})
        if url.path.endswith("/experiments/search"):
            return self._answer(200, {"experiments": answers["experiments"]})
        if url.path.endswith("/registered-models/search"):
            return self._answer(200, {"registered_models": answers["registered_models"]})
        if url.path.endswith("/model-versions/search"):
            text = query["filter"][0]
            versions = [v for v in answers["model_versions"] if f"'{v['run_id']}'" in text or f"'{v['name']}'" in text]
            return self._answer(200, {"model_versions": versions})
        self._answer(500, {"error_code": "INTERNAL_ERROR"})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(("POST", self.path, self.headers.get("Authorization")))
        if body.get("filter"):
            return self._answer(400, {"error_code": "INVALID_PARAMETER_VALUE"})  # MLflow's client gets to say why
        runs = [r for r in self.answers["runs"] if r["info"]["experiment_id"] in body["experiment_ids"]]
        self._answer(200, {"runs": runs[: body["max_results"]]})


@pytest.fixture(scope="module")
def server(store):
    _FakeServer.answers = _server_answers(store)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _FakeServer)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_rest_listings_match_mlflow(store, server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "secret-token")
    _FakeServer.seen.clear()
    for experiment, limit in (("fovea", 50), ("all", 3)):
        expected = _through_mlflow(monkeypatch, browse.list_runs, store, experiment=experiment, limit=limit)
        assert _steady(browse.list_runs(server, experiment=experiment, limit=limit)) == _steady(expected)
    assert browse.list_models(server) == _through_mlflow(monkeypatch, browse.list_models, store)
    assert _FakeServer.seen and all(auth == "Bearer secret-token" for _, _, auth in _FakeServer.seen)
    with pytest.raises(ValueError, match=r"^no experiment 'nope' \(experiments: Default, fovea, other"):
        fast_browse.list_runs(server, experiment="nope", limit=5)
    # the server refuses the filter: MLflow's client asks again, and says why
    assert fast_browse.list_runs(server, experiment="fovea", limit=5, filter_string="bad filter") is None


def test_rest_basic_auth_and_unreachable_server(server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ana")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    _FakeServer.seen.clear()
    assert [row["name"] for row in fast_browse.list_models(server)] == ["empty-model", NAME]
    assert {auth for _, _, auth in _FakeServer.seen} == {"Basic YW5hOnB3"}
    with pytest.raises(ValueError, match=r"^searching runs: API request to http://127\.0\.0\.1:9/api/2\.0/mlflow/"):
        fast_browse.list_runs("http://127.0.0.1:9", experiment="fovea", limit=5)
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")  # only MLflow's client knows it
    assert fast_browse.list_models(server) is None
