"""Issue 24: registered models predict from raw inputs. The pyfunc loads in a fresh process that has not imported
fovea (images: JPEG bytes and uint8 arrays; video: MP4 bytes) and answers what fovea's own decoding and the network
give; ``mlflow models serve`` answers a POST; ``jobs/predict.py`` skips and lists bad files and agrees with
``evaluate.py``; ``fovea predict`` prints a table."""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import make_colour_folder, mlflow_store, prepare_colour_set, smoke_config
from mlflow.tracking import MlflowClient
from PIL import Image

from fovea.data.clips import ClipSpec, DecodeClips
from fovea.data.demo_video import render_demo_video, write_mp4
from fovea.data.transforms import DecodeImages
from fovea.models import create_model
from fovea.track import ensure_experiment, log_final_model

IMAGE_MODEL, VIDEO_MODEL = "vit_micro_patch4_32", "c3d_micro"
CLASSES, ACTIONS = ["blue", "green", "red"], ["grow", "shrink"]
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
CLIP = {"num_frames": 4, "frame_interval": 2, "sampling": "dense", "num_temporal_clips": 2, "num_spatial_crops": 1}


def _sharpened(model: torch.nn.Module) -> torch.nn.Module:
    """A random model whose logits are far apart (no near-ties for two computations to break differently)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith(("head", "fc")) and name.endswith("weight"):
                parameter.mul_(30)
    return model.eval()


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> dict:
    """``predict-img@champion`` (a 3-class micro ViT, crop_pct 1) and ``predict-video@champion`` (a 2-class C3D,
    4 frames every 2nd, 2 clips per video) registered the way training registers them."""
    uri = mlflow_store(tmp_path_factory.mktemp("predict_mlflow"))
    client = MlflowClient(uri, registry_uri=uri)
    experiment = ensure_experiment(uri, "training")
    torch.manual_seed(0)
    image = _sharpened(create_model(IMAGE_MODEL, num_classes=3, img_size=32))
    video = _sharpened(create_model(VIDEO_MODEL, num_classes=2, img_size=32, num_frames=4))
    common = {"img_size": 32, "mean": MEAN, "std": STD, "crop_pct": 1.0}
    for name, net, classes, metadata, example in (
        ("predict-img", image, CLASSES, {"create_kwargs": {"num_classes": 3, "img_size": 32}}, (1, 3, 32, 32)),
        (
            "predict-video",
            video,
            ACTIONS,
            {"create_kwargs": {"num_classes": 2, "img_size": 32, "num_frames": 4}, **CLIP},
            (1, 3, 4, 32, 32),
        ),
    ):
        model_name = IMAGE_MODEL if name == "predict-img" else VIDEO_MODEL
        log_final_model(
            uri,
            client.create_run(experiment).info.run_id,
            net,
            input_example=np.zeros(example, np.float32),
            registered_model_name=name,
            version_tags={},
            classes=classes,
            metadata={"model_name": model_name, **common, **metadata},
            alias="champion",
        )
    return {"uri": uri, "image": image, "video": video}


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _inputs(tmp_path: Path) -> dict:
    rng = np.random.default_rng(3)
    wide = np.clip(np.array([200, 40, 40]) + rng.normal(0, 40, (40, 56, 3)), 0, 255).astype(np.uint8)
    tall = np.clip(np.array([40, 60, 200]) + rng.normal(0, 40, (50, 36, 3)), 0, 255).astype(np.uint8)
    clip_path = tmp_path / "clip.mp4"
    write_mp4(clip_path, render_demo_video("grow", rng, size=48, num_frames=20))
    return {"jpeg": _jpeg(wide), "array": tall, "mp4": clip_path.read_bytes()}


def _probabilities(model: torch.nn.Module, views: np.ndarray) -> np.ndarray:
    """Softmax of the mean logits over views, normalised by hand: ``views`` uint8 ``(B, V, 3, [T,] S, S)``."""
    shape = (1, 3) + (1,) * (views.ndim - 3)
    flat = torch.from_numpy(views).flatten(0, 1).float() / 255
    with torch.no_grad():
        logits = model((flat - torch.tensor(MEAN).view(shape)) / torch.tensor(STD).view(shape))
    return logits.view(views.shape[0], views.shape[1], -1).mean(1).softmax(1).numpy()


FRESH = r"""
import base64, json, sys
import numpy as np, pandas as pd
import mlflow
assert "fovea" not in sys.modules
mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_registry_uri(sys.argv[1])
data = json.load(open(sys.argv[2]))
image = mlflow.pyfunc.load_model("models:/predict-img@champion")
frame = pd.DataFrame({"image": [base64.b64decode(data["jpeg"]), np.array(data["array"], dtype=np.uint8), b"junk"]})
images = image.predict(frame, params={"top_k": 2, "logits": True})
video = mlflow.pyfunc.load_model("models:/predict-video@champion")
clips = video.predict(pd.DataFrame({"video": [base64.b64decode(data["mp4"])]}))
print(json.dumps({"images": images.to_dict("records"), "video": clips.to_dict("records")}, default=float))
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(port: int, payload: dict, deadline: float, server: subprocess.Popen) -> dict:
    """POST ``payload`` to the server's /invocations once it answers /ping (polled until ``deadline``)."""
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).read()
            break
        except OSError:
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else "server exited"
            assert time.time() < deadline, "mlflow models serve did not answer /ping in time"
            time.sleep(0.5)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    return json.loads(urllib.request.urlopen(request, timeout=60).read())


def test_the_registered_pyfunc_takes_raw_inputs_in_a_fresh_process_and_when_served(registry, tmp_path):
    """Acceptance 1-3: plain ``mlflow.pyfunc.load_model`` in a process that has not imported fovea (JPEG bytes, a
    uint8 array, junk; MP4 bytes), and ``mlflow models serve --env-manager local`` answering a base64 JPEG; the
    probabilities are the ones fovea's evaluation decoding and the network give."""
    inputs = _inputs(tmp_path)
    payload = tmp_path / "inputs.json"
    encoded = {"jpeg": base64.b64encode(inputs["jpeg"]).decode(), "mp4": base64.b64encode(inputs["mp4"]).decode()}
    payload.write_text(json.dumps({**encoded, "array": inputs["array"].tolist()}))
    port = _free_port()
    import os

    environment = {"MLFLOW_TRACKING_URI": registry["uri"], "MLFLOW_REGISTRY_URI": registry["uri"]}
    # the server runs `uvicorn` from PATH: this interpreter's scripts folder, activated or not
    environment["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/predict-img@champion", "--env-manager"]
        + ["local", "--port", str(port), "--host", "127.0.0.1", "--workers", "1"],
        env={**os.environ, **environment},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the uvicorn it starts stops with it
    )
    try:
        fresh = subprocess.run(
            [sys.executable, "-c", FRESH, registry["uri"], str(payload)], capture_output=True, text=True, timeout=240
        )
        assert fresh.returncode == 0, fresh.stderr[-3000:]
        answer = json.loads(fresh.stdout.strip().splitlines()[-1])
        served = _post(
            port,
            {"dataframe_split": {"columns": ["image"], "data": [[encoded["jpeg"]]]}, "params": {"top_k": 3}},
            time.time() + 180,
            server,
        )
    finally:
        import signal

        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

    # what evaluation's decoding (centre crop at crop_pct 1) and the network give, computed here
    decode = DecodeImages(32, train=False, crop_pct=1.0)
    array_png = io.BytesIO()
    Image.fromarray(inputs["array"]).save(array_png, format="PNG")  # lossless: the same pixels as the array
    views = decode({"image": np.array([inputs["jpeg"], array_png.getvalue()], dtype=object), "label": np.zeros(2)})
    expected = _probabilities(registry["image"], views["image"][:, None])
    images = answer["images"]
    for row, probabilities in zip(images[:2], expected, strict=True):
        order = np.argsort(-probabilities)[:2]
        assert row["error"] == "" and row["classes"] == [CLASSES[i] for i in order] and row["label"] in CLASSES
        assert np.allclose(row["probabilities"], probabilities[order], atol=1e-5)
        assert len(row["logits"]) == 3
    assert images[2]["classes"] == [] and "not an image" in images[2]["error"]

    clip = {"video": inputs["mp4"], "num_frames": 20, "path": "clip.mp4"}
    spec = ClipSpec(img_size=32, crop_pct=1.0, **{k: v for k, v in CLIP.items()})
    clip_views = np.stack(DecodeClips(spec, train=False).views(clip))[None]  # (1, 2 clips, 3, 4, 32, 32)
    video_expected = _probabilities(registry["video"], clip_views)[0]
    (video_row,) = answer["video"]
    assert video_row["error"] == "" and video_row["classes"] == [ACTIONS[i] for i in np.argsort(-video_expected)]
    assert np.allclose(video_row["probabilities"], np.sort(video_expected)[::-1], atol=1e-5)

    (served_row,) = served["predictions"]
    assert served_row["classes"][0] == images[0]["classes"][0] and len(served_row["classes"]) == 3
    assert served_row["probability"] == pytest.approx(images[0]["probability"], abs=1e-5)


def test_the_logged_model_carries_a_real_example_its_signature_and_one_weights_copy(registry, tmp_path):
    import mlflow.pytorch
    from mlflow.models import Model

    client = MlflowClient(registry["uri"], registry_uri=registry["uri"])
    stored = Path(client.get_model_version_download_uri("predict-img", "1").removeprefix("file://"))
    mlmodel = Model.load(str(stored / "MLmodel"))
    assert set(mlmodel.flavors) >= {"python_function", "pytorch"}
    assert mlmodel.flavors["python_function"]["artifacts"]["fovea_model"]["path"] == "extra_files"
    assert sorted(p.name for p in (stored / "extra_files").iterdir()) == [
        "fovea_model.json",
        "weights.pt",
        "weights.pt.sha256",
    ]
    assert not list(stored.rglob("artifacts/*/weights.pt"))  # the weights are not stored twice
    assert mlmodel.signature.inputs.input_names() == ["image", "path"]
    assert {spec.name for spec in mlmodel.signature.params.params} == {"top_k", "logits", "views"}
    example = json.loads((stored / "input_example.json").read_text())
    encoded = example["data"][0][0]
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB"))
    assert pixels.shape[0] >= 32 and pixels.std() > 10  # a real (demo) image, not zeros
    serving = json.loads((stored / "serving_input_example.json").read_text())
    assert serving["dataframe_split"]["columns"] == ["image"]
    video_dir = Path(client.get_model_version_download_uri("predict-video", "1").removeprefix("file://"))
    assert base64.b64decode(json.loads((video_dir / "input_example.json").read_text())["data"][0][0])[4:8] == b"ftyp"
    torch_model = mlflow.pytorch.load_model(str(stored))  # MLflow's own torch loader still has its flavor
    probe = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(torch_model(probe), registry["image"](probe), atol=1e-5)


@pytest.mark.slow
def test_batch_predictions_skip_bad_files_and_agree_with_evaluate(ray_local, registry, tmp_path, capsys):
    """Acceptance 4: over a folder with damaged files, one row per good file and the bad ones listed; on the files
    of the prepared val split, the confusion matrix evaluate.py counts there."""
    from fovea.evaluate.job import run_evaluation
    from fovea.predict.batch import predict_main

    prepared = prepare_colour_set(tmp_path / "set", per_class=6, val_fraction=0.5, shard_rows=8)
    raw = tmp_path / "set" / "raw"
    (raw / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not the rest of a jpeg")
    good_png = (raw / "green" / "001.png").read_bytes()
    (raw / "green" / "cut.png").write_bytes(good_png[: len(good_png) // 3])
    (raw / "README.txt").write_text("not an image")
    model = "models:/predict-img@champion"
    common = ["--model", model, "--tracking-uri", registry["uri"], "--batch-size", "8"]

    assert predict_main([*common, "--data", str(raw), "--out", str(tmp_path / "folder.parquet")]) == 0
    printed = capsys.readouterr().out
    folder = pq.read_table(tmp_path / "folder.parquet").to_pylist()
    assert len(folder) == 18 and all(row["label"] in CLASSES and len(row["classes"]) == 3 for row in folder)
    skipped = (tmp_path / "folder.parquet.skipped.csv").read_text().splitlines()
    assert sorted(line.split(",")[0].rsplit("/", 1)[-1] for line in skipped[1:]) == ["broken.jpg", "cut.png"]
    assert "skipped        2 unreadable" in printed and "ignored        1 files" in printed
    assert "files/s" in printed and "predicted 20/20 files (2 skipped)" in printed

    # the val split's files, as the prepared shards record them (no Ray): their labels from the folder run
    from fovea.data import load_manifest
    from fovea.predict.batch import UsageError, list_inputs

    manifest = load_manifest(prepared)
    shards = manifest["splits"]["val"]["shards"]
    val = [row for shard in shards for row in pq.read_table(shard, columns=["path", "label"]).to_pylist()]
    predicted = {row["path"]: row["label"] for row in folder}
    assert len(val) == 9 and all(row["path"] in predicted for row in val)
    assert list_inputs(str(prepared), video=False, split="val").count == 9  # a prepared split is an input too
    with pytest.raises(UsageError, match="has no 'test' split"):
        list_inputs(str(prepared), video=False, split="test")
    cfg = smoke_config(
        "evaluate",
        "evaluate",
        {"track": {"enabled": False, "uri": registry["uri"]}},
        {"eval": {"model": model, "views": "single"}, "data": {"path": str(prepared)}},
    )
    scores = run_evaluation(cfg).single
    confusion = np.zeros((3, 3), np.int64)
    for row in val:
        confusion[int(row["label"]), CLASSES.index(predicted[row["path"]])] += 1
    assert np.array_equal(confusion, scores.confusion)
    accuracy = 100 * np.trace(confusion) / confusion.sum()
    assert scores.top1 == pytest.approx(accuracy)

    if not ray_local.cluster_resources().get("GPU"):  # an actor waiting for a GPU that is not there: refused
        capsys.readouterr()
        assert predict_main([*common, "--data", str(raw), "--out", str(tmp_path / "g.parquet"), "--use-gpu"]) == 2
        assert "--use-gpu: this Ray cluster has no GPU" in capsys.readouterr().err


def test_bad_predict_arguments_are_one_line_errors(tmp_path, capsys):
    from fovea.predict.batch import predict_main

    cases = {
        ("--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "p.parquet")): "--data: no such file or folder",
        ("--data", str(tmp_path), "--out", str(tmp_path / "p.csv")): "is not a .parquet file",
        ("--data", str(tmp_path), "--out", str(tmp_path / "p.parquet"), "--top-k", "0"): "--top-k must be at least 1",
        ("--data", str(tmp_path), "--out", str(tmp_path / "p.parquet"), "train.epochs=3"): "unknown argument",
    }
    model = ["--model", "models:/nothing@champion", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    for args, message in cases.items():
        code = predict_main([*model, *args])
        error = capsys.readouterr().err.strip()
        assert code == 2 and len(error.splitlines()) == 1 and message in error, (args, error)
    assert not (tmp_path / "m.db").exists()  # every one was refused before a store was opened


def test_fovea_predict_prints_top_k_and_names_a_bad_file(registry, tmp_path, capsys):
    from fovea.cli import main

    make_colour_folder(tmp_path / "colours", per_class=1)
    good = sorted((tmp_path / "colours").rglob("*.jpg"))[0]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    code = main(["--tracking-uri", registry["uri"], "predict", "predict-img@champion", str(good), str(bad)])
    out = capsys.readouterr().out
    assert code == 2 and "models:/predict-img/1" in out and "TOP-3" in out
    line = next(text for text in out.splitlines() if text.startswith(str(good)[-30:]) or good.name in text)
    assert sum(name in line for name in CLASSES) == 3 and "%" in line
    assert "error: not an image" in out and "1 of 2 files could not be read" in out
    assert main(["--tracking-uri", registry["uri"], "--json", "predict", "predict-img@champion", str(good)]) == 0
    listed = json.loads(capsys.readouterr().out)["predictions"]
    assert listed[0]["label"] in CLASSES and len(listed[0]["top"]) == 3


def test_inputs_come_from_a_folder_of_the_models_kind_or_a_list_file(tmp_path):
    from fovea.predict.batch import UsageError, list_inputs

    (tmp_path / "a").mkdir()
    for name in ("a/1.jpg", "a/2.PNG", "a/clip.mp4", "a/.hidden.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    images = list_inputs(str(tmp_path), video=False, split="val")
    assert [Path(p).name for p in images.paths] == ["1.jpg", "2.PNG"] and images.ignored == 2
    assert [Path(p).name for p in list_inputs(str(tmp_path), video=True, split="val").paths] == ["clip.mp4"]
    listing = tmp_path / "files.txt"
    listing.write_text("# two files\na/1.jpg\n\n/elsewhere/b.jpg\n")
    assert list_inputs(str(listing), video=False, split="val").paths == [str(tmp_path / "a/1.jpg"), "/elsewhere/b.jpg"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no image files"):
        list_inputs(str(tmp_path / "empty"), video=False, split="val")


@pytest.mark.slow
def test_ray_serve_answers_a_raw_file_and_a_json_batch_with_a_bad_input(ray_local, registry, tmp_path):
    """``serve run fovea.predict.serve:app model=...``'s application, on this module's Ray: a raw JPEG body and a JSON
    request of two base64 inputs (one junk) answer what evaluation's decoding and the network give."""
    from ray import serve

    from fovea.predict.serve import app

    jpeg = _inputs(tmp_path)["jpeg"]
    decode = DecodeImages(32, train=False, crop_pct=1.0)
    views = decode({"image": np.array([jpeg], dtype=object), "label": np.zeros(1)})["image"][:, None]
    expected = _probabilities(registry["image"], views)[0]
    order = np.argsort(-expected)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(app({"model": "predict-img@champion", "tracking_uri": registry["uri"], "top_k": "3"}))

        def post(body: bytes, query: str = "", content_type: str = "image/jpeg") -> object:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/{query}", data=body)
            request.add_header("Content-Type", content_type)
            return json.loads(urllib.request.urlopen(request, timeout=60).read())

        raw = post(jpeg, "?top_k=2")
        batch = post(
            json.dumps({"inputs": [base64.b64encode(x).decode() for x in (jpeg, b"junk")]}).encode(),
            "",
            "application/json",
        )
    finally:
        serve.shutdown()
    assert raw["classes"] == [CLASSES[i] for i in order[:2]] and raw["label"] == CLASSES[order[0]]
    assert np.allclose(raw["probabilities"], expected[order[:2]], atol=1e-5)
    good, junk = batch
    assert good["classes"] == [CLASSES[i] for i in order]
    assert np.allclose(good["probabilities"], expected[order], atol=1e-5)
    assert junk["classes"] == [] and "not an image" in junk["error"]


def test_ray_serve_requests_parse_raw_bodies_and_json_and_refuse_malformed_ones():
    from fovea.predict.serve import BadRequest, builder_args, parse_request

    raw = parse_request(b"\xff\xd8jpeg", "image/jpeg", {"top_k": "2"}, 5)
    assert raw.items == [b"\xff\xd8jpeg"] and raw.top_k == 2 and raw.single
    body = json.dumps({"inputs": [base64.b64encode(b"abc").decode(), "@@not base64@@"], "top_k": 1}).encode()
    parsed = parse_request(body, "application/json; charset=utf-8", {}, 5)
    assert parsed.items[0] == b"abc" and "not base64" in parsed.items[1] and parsed.top_k == 1 and not parsed.single
    for body, content_type, query, message in (
        (b"", "image/jpeg", {}, "an empty body"),
        (b"{", "application/json", {}, "not JSON"),
        (b'{"inputs": []}', "application/json", {}, "at least one input"),
        (b'{"inputs": [1]}', "application/json", {}, r"inputs\[0\] is not a base64 string but int"),
        (b'{"inputs": ["YQ=="], "k": 1}', "application/json", {}, "unknown JSON key 'k'"),
        (b"x", "image/png", {"top_k": "0"}, "top_k must be a positive integer"),
    ):
        with pytest.raises(BadRequest, match=message):
            parse_request(body, content_type, query, 5)
    assert builder_args({"model": "m@a", "use_gpu": "true", "max_batch_size": "4"})["max_batch_size"] == 4
    for args, message in (({}, "model= is required"), ({"model": "m@a", "nope": 1}, "unknown argument 'nope'")):
        with pytest.raises(ValueError, match=message):
            builder_args(args)
