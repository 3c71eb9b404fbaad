"""Ray Serve for a fovea model: ``serve run fovea.predict.serve:app model=models:/NAME@ALIAS``.

``app`` (the application builder ``serve run`` calls with its ``key=value`` arguments) checks the arguments and
loads the model once on the driver, so a bad argument or an unknown model is one line before anything starts.
Each replica of ``FoveaModel`` then builds the model once as the batch job's actors build it (``PredictBatch``:
``fovea.sources.load_model``, ``Predictor.from_info``) and answers HTTP requests: a raw file body (an image or
video file's bytes, ``?top_k=3``) with that file's top-k, or JSON ``{"inputs": [<base64 file>, ...], "top_k": k}``
with a list. Inputs are batched across requests (``@serve.batch``: up to ``max_batch_size`` inputs, waiting at
most ``batch_wait_timeout_s`` for more). An input that does not decode gets its ``error`` (HTTP 200); a malformed
request is HTTP 400 with a one-line ``error``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import click
from ray import serve

from fovea.errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "model": "",
    "tracking_uri": "",
    "top_k": 5,
    "views": "default",
    "max_batch_size": 8,
    "batch_wait_timeout_s": 0.05,
    "num_replicas": 1,
    "use_gpu": False,
}


class ServeArgumentError(ConfigError, click.ClickException):
    """A bad builder argument or a model that does not load: a ``ConfigError`` that ``serve run`` (a click
    command) prints as one line, ``Error: ...``, exit 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        click.ClickException.__init__(self, message)


class BadRequest(ValueError):
    """A request that cannot be read: HTTP 400 with this one line."""


@dataclass
class ParsedRequest:
    """A parsed request: its inputs (file bytes, or the reason an input is unusable) and ``top_k``."""

    items: list[bytes | str]  # a str is the error of an input that is not base64
    top_k: int
    single: bool  # a raw body: one answer object, not a list


def _top_k(value: Any) -> int:
    try:
        number = 0 if isinstance(value, bool | float) else int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise BadRequest(f"top_k must be a positive integer, not {value!r}")
    return number


def parse_request(body: bytes, content_type: str, query: dict[str, str], default_top_k: int) -> ParsedRequest:
    """A request's inputs: a raw file body (any content type but JSON; ``?top_k=``), or JSON
    ``{"inputs": [<base64>, ...], "top_k": k}``.

    Raises:
        BadRequest: one line saying what is wrong with the request.
    """
    top_k = _top_k(query["top_k"]) if "top_k" in query else default_top_k
    if "json" not in content_type.split(";")[0].lower():
        if not body:
            raise BadRequest("an empty body: send a file's bytes, or JSON with base64 inputs")
        return ParsedRequest([body], top_k, single=True)
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise BadRequest(f"the body is not JSON: {err}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list) or not payload["inputs"]:
        raise BadRequest('JSON requests are {"inputs": [<base64 file>, ...], "top_k": k} with at least one input')
    unknown = sorted(set(payload) - {"inputs", "top_k"})
    if unknown:
        raise BadRequest(f"unknown JSON key {unknown[0]!r}: only inputs and top_k")
    if "top_k" in payload:
        top_k = _top_k(payload["top_k"])
    items: list[bytes | str] = []
    for index, value in enumerate(payload["inputs"]):
        if not isinstance(value, str):
            raise BadRequest(f"inputs[{index}] is not a base64 string but {type(value).__name__} {value!r:.40}")
        try:
            items.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            items.append("not base64: give each input as a file's bytes in base64")
    return ParsedRequest(items, top_k, single=False)


def answer(prediction: Any, top_k: int) -> dict[str, Any]:
    """One input's JSON answer (a ``Prediction`` cut to ``top_k``, or an error string)."""
    if isinstance(prediction, str) or prediction.error:
        error = prediction if isinstance(prediction, str) else prediction.error
        return {"label": None, "probability": None, "classes": [], "probabilities": [], "error": error}
    return {
        "label": prediction.label,
        "probability": prediction.probability,
        "classes": prediction.classes[:top_k],
        "probabilities": prediction.probabilities[:top_k],
    }


@serve.deployment
class FoveaModel:
    """One replica: the model built once, every input of concurrent requests predicted in batches."""

    def __init__(self, model: str, tracking_uri: str, *, views: str, top_k: int, batching: dict[str, Any]) -> None:
        from fovea.predict.batch import PredictBatch

        use_gpu, options = batching["use_gpu"], {"batch_size": batching["max_batch_size"]}  # one pass per batch
        loaded = PredictBatch(model, tracking_uri, views=views, top_k=top_k, use_gpu=use_gpu, options=options)
        self.predictor, self.top_k = loaded.predictor, top_k
        self.predict_batch.set_max_batch_size(batching["max_batch_size"])
        self.predict_batch.set_batch_wait_timeout_s(batching["batch_wait_timeout_s"])

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def predict_batch(self, calls: list[tuple[bytes, int]]) -> list[Any]:
        """Inputs of any requests together: one ``Predictor.predict`` (in a thread: the replica keeps taking
        requests), each answered with the largest ``top_k`` asked for and cut to its own."""
        items = [item for item, _ in calls]
        most = max(k for _, k in calls)
        return await asyncio.to_thread(self.predictor.predict, items, top_k=most)

    async def __call__(self, http: Any) -> Any:
        from starlette.responses import JSONResponse

        body = await http.body()
        try:
            request = parse_request(body, http.headers.get("content-type", ""), dict(http.query_params), self.top_k)
        except BadRequest as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        predicted = await asyncio.gather(
            *(self.predict_batch((item, request.top_k)) for item in request.items if isinstance(item, bytes))
        )
        results = iter(predicted)
        answers = [answer(item if isinstance(item, str) else next(results), request.top_k) for item in request.items]
        return JSONResponse(answers[0] if request.single else answers)


def builder_args(args: dict[str, Any]) -> dict[str, Any]:
    """``serve run``'s ``key=value`` arguments with their types and defaults.

    Raises:
        ServeArgumentError: an unknown key, a missing ``model`` or a bad value (one line).
    """
    from fovea.predict.inputs import VIEW_CHOICES

    unknown = sorted(set(args) - set(DEFAULTS))
    if unknown:
        raise ServeArgumentError(f"fovea serve: unknown argument {unknown[0]!r} (known: {', '.join(DEFAULTS)})")
    merged = {**DEFAULTS, **args}
    if not str(merged["model"]).strip():
        raise ServeArgumentError(
            "fovea serve: model= is required (models:/NAME@ALIAS, NAME@ALIAS, a checkpoint or folder)"
        )
    out: dict[str, Any] = {"model": str(merged["model"]).strip(), "tracking_uri": str(merged["tracking_uri"] or "")}
    for key, kind in (("top_k", int), ("max_batch_size", int), ("num_replicas", int), ("batch_wait_timeout_s", float)):
        try:
            out[key] = kind(merged[key])
        except (TypeError, ValueError):
            raise ServeArgumentError(f"fovea serve: {key}={merged[key]!r} is not a number") from None
        if out[key] < (0 if key == "batch_wait_timeout_s" else 1):
            raise ServeArgumentError(f"fovea serve: {key} must be at least {0 if key == 'batch_wait_timeout_s' else 1}")
    use_gpu = str(merged["use_gpu"]).strip().lower()
    if use_gpu not in ("true", "false", "1", "0"):
        raise ServeArgumentError(f"fovea serve: use_gpu={merged['use_gpu']!r}: true or false")
    out["use_gpu"] = use_gpu in ("true", "1")
    if merged["views"] not in VIEW_CHOICES:
        raise ServeArgumentError(f"fovea serve: views={merged['views']!r}: one of {', '.join(VIEW_CHOICES)}")
    out["views"] = merged["views"]
    return out


def app(args: dict[str, Any]) -> Any:
    """The application ``serve run fovea.predict.serve:app model=...`` builds: the arguments checked and the model
    loaded once here (its registry store made absolute, as ``fovea predict`` reads it), then ``num_replicas``
    replicas (one GPU each with ``use_gpu=true``).

    Raises:
        ServeArgumentError: a bad argument or a model that cannot be loaded (one line).
    """
    from pathlib import Path

    from fovea.cli.format import CommandError, store_uri
    from fovea.errors import first_line
    from fovea.predict.batch import PredictBatch
    from fovea.sources import source_kind

    settings = builder_args(args)
    model = settings["model"]
    kind, _ = source_kind(model)
    try:
        uri = store_uri(SimpleNamespace(tracking_uri=settings["tracking_uri"])) if kind == "registry" else ""
        model = model if kind == "registry" else str(Path(model).expanduser().resolve())  # replicas run elsewhere
        # built here once as each replica builds it (on the CPU), so that a model that cannot serve fails now
        probe = PredictBatch(model, uri, views=settings["views"], top_k=settings["top_k"], use_gpu=False, options={})
        model = probe.location if kind == "registry" else model  # every replica serves the version resolved here
    except (CommandError, ValueError, OSError, RuntimeError, KeyError, ImportError) as err:
        raise ServeArgumentError(f"fovea serve: model {settings['model']}: {first_line(err)}") from None
    batching = {key: settings[key] for key in ("max_batch_size", "batch_wait_timeout_s", "use_gpu")}
    options: dict[str, Any] = {"ray_actor_options": {"num_gpus": 1}} if settings["use_gpu"] else {}
    deployment = FoveaModel.options(
        num_replicas=settings["num_replicas"], max_ongoing_requests=max(16, 2 * settings["max_batch_size"]), **options
    )
    return deployment.bind(model, uri, views=settings["views"], top_k=settings["top_k"], batching=batching)
