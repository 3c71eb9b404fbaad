"""Secrets never leave fovea: params, printed lines, artifacts, checkpoints, model metadata and sweep files carry
``***`` where the config holds a secret, and URIs with credentials in them are refused before anything starts."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from helpers import mlflow_store
from mlflow.tracking import MlflowClient

from fovea.config import Config, ConfigError, build_config, describe_fields, flatten, parse_job_args, set_path
from fovea.secrets import MARKER, is_secret_name, redact

ROOT = Path(__file__).resolve().parents[2]
VIT_PRESETS = ROOT / "jobs" / "configs" / "vit"
SECRET = "s3cr3t-Value-4711"
NESTED_SECRET = "hub-pa55-0815"
ENV_SECRET = "env-s3cr3t-1234"
# a config with secrets in two places beside constructor arguments whose names look like secrets but are not
OVERRIDES = [
    f"model.kwargs.api_token={SECRET}",
    f"model.kwargs.hub={{url: 'https://hub.internal', password: {NESTED_SECRET}}}",
    "model.kwargs.class_token=false",
    "model.kwargs.reg_tokens=4",
]


@pytest.fixture
def env_secret(monkeypatch):
    """A secret in the environment, under a name that says so: nothing fovea writes or prints may contain it."""
    monkeypatch.setenv("FOVEA_TEST_SECRET_KEY", ENV_SECRET)


@pytest.fixture
def cfg(env_secret) -> Config:
    return parse_job_args("train_vit", VIT_PRESETS, ["--preset", "smoke", *OVERRIDES])


def _assert_hidden(text: str) -> None:
    for value in (SECRET, NESTED_SECRET, ENV_SECRET):
        assert value not in text


def _files_holding(root: Path, text: str) -> list[str]:
    needle = text.encode()
    return [str(p.relative_to(root)) for p in sorted(root.rglob("*")) if p.is_file() and needle in p.read_bytes()]


def test_which_names_hold_secrets():
    for name in ("model.kwargs.api_token", "api_key", "apiKey", "APIKey", "hf_token", "AWS_SECRET_ACCESS_KEY",
                 "MLFLOW_TRACKING_PASSWORD", "db_passwd", "client-secret", "FOVEA_TEST_SECRET_KEY"):  # fmt: skip
        assert is_secret_name(name), name
    for name in ("train.keep_checkpoints", "model.kwargs", "tokenizer", "keyframe_interval", "secretary",
                 "scaling.resources_per_worker.accelerator_type:H100", "MLFLOW_TRACKING_URI", "passage"):  # fmt: skip
        assert not is_secret_name(name), name


def test_no_config_field_is_named_like_a_secret():
    # Every field of the schema today; a field added with such a name would have its text values hidden in MLflow.
    paths = [line.split()[0] for line in describe_fields().splitlines()]
    assert len(paths) == len(Config().flat()) > 100
    assert [path for path in paths if is_secret_name(path)] == []


def test_redaction_hides_text_under_secret_names_and_keeps_everything_else():
    tree = {
        "model": {"kwargs": {"api_token": SECRET, "hub": {"password": [NESTED_SECRET, 7]}, "class_token": False}},
        "tune.model.kwargs.api_key": SECRET,  # dotted keys, as in flat params
        "key_dim": 16,
        "name": "vit",
    }
    assert redact(tree) == {
        "model": {"kwargs": {"api_token": MARKER, "hub": {"password": [MARKER, 7]}, "class_token": False}},
        "tune.model.kwargs.api_key": MARKER,
        "key_dim": 16,
        "name": "vit",
    }
    assert tree["model"]["kwargs"]["api_token"] == SECRET  # a copy: the input is untouched


def test_the_config_keeps_secrets_for_training_and_hides_them_in_params(cfg):
    assert cfg.model.kwargs["api_token"] == SECRET  # the run itself gets the real value
    assert cfg.model.kwargs["hub"]["password"] == NESTED_SECRET
    params = cfg.flat()
    assert params["model.kwargs"] == {
        "api_token": MARKER,
        "hub": {"url": "https://hub.internal", "password": MARKER},
        "class_token": False,
        "reg_tokens": 4,
    }
    assert params["model.name"] == "vit_micro_convstem_32" and params["train.keep_checkpoints"] == 2
    _assert_hidden(json.dumps(params))
    _assert_hidden(json.dumps(cfg.redacted()))


def test_the_job_prints_no_secret(cfg, monkeypatch, capsys):
    from fovea.train import trainer

    ran = []
    monkeypatch.setattr(trainer, "check_before_start", lambda config: None)
    monkeypatch.setattr(
        trainer, "run_training", lambda config, checked: ran.append(config) or SimpleNamespace(describe=str)
    )
    assert trainer.job_main("train_vit", VIT_PRESETS, argv=["--preset", "smoke", *OVERRIDES]) == 0
    assert ran[0].model.kwargs["api_token"] == SECRET
    out = capsys.readouterr()
    assert "fovea train_vit: model vit_micro_convstem_32" in out.out
    _assert_hidden(out.out + out.err)


@pytest.mark.parametrize(
    ("override", "shown"),
    [
        # a value the schema rejects, under a secret name: the error says where, and not what
        (f"scaling.resources_per_worker.api_key={SECRET}", "scaling.resources_per_worker.api_key: "),
        (f"model.kwargs.api-key={SECRET}", "'model.kwargs.api-key=***': overrides look like section.field=value"),
    ],
)
def test_config_errors_do_not_repeat_a_secret(override, shown, capsys):
    with pytest.raises(SystemExit) as exit_request:
        parse_job_args("train_vit", VIT_PRESETS, ["--preset", "smoke", override])
    assert exit_request.value.code == 2
    err = capsys.readouterr().err
    assert shown in err and len(err.strip().splitlines()) == 1
    assert SECRET not in err


@pytest.mark.parametrize(
    ("path", "uri", "where_instead"),
    [
        ("track.uri", f"http://alice:{SECRET}@mlflow.internal:5000",
         "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
        ("track.uri", f"https://{SECRET}@mlflow.internal", "(or MLFLOW_TRACKING_TOKEN)"),
        ("track.uri", f"postgresql://mlflow:{SECRET}@db.internal/mlflow", "PGPASSWORD"),
        ("data.path", f"s3://datasets/k400?endpoint_override=minio:9000&access_key=AKIA1&secret_key={SECRET}",
         "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        ("train.storage_path", f"s3://AKIA1:{SECRET}@runs/fovea", "AWS_ACCESS_KEY_ID"),
        ("distill.teacher", f"gs://{SECRET}@models/teacher.pt", "GOOGLE_APPLICATION_CREDENTIALS"),
        ("tune.space.data.path", f"choice(s3://datasets/a, s3://AKIA1:{SECRET}@datasets/b)", "AWS_SECRET_ACCESS_KEY"),
        # passwords holding characters a URI parser takes for the end of the user part
        ("track.uri", f"http://alice:{SECRET}/x@mlflow.internal/", "MLFLOW_TRACKING_PASSWORD"),
        ("track.uri", f"http://alice:/{SECRET}@mlflow.internal/", "MLFLOW_TRACKING_PASSWORD"),
        ("track.uri", f"http://alice:{SECRET}#x@mlflow.internal/", "MLFLOW_TRACKING_PASSWORD"),
        ("track.uri", f"http://alice:{SECRET}?x@mlflow.internal/", "MLFLOW_TRACKING_PASSWORD"),
        ("track.uri", f"http://alice:{SECRET}@x@mlflow.internal/", "MLFLOW_TRACKING_PASSWORD"),
        ("track.uri", f"http://alice:p@{SECRET}/x@mlflow.internal/", "MLFLOW_TRACKING_PASSWORD"),
        ("track.uri", f"http://alice:{SECRET},x(@mlflow.internal", "MLFLOW_TRACKING_PASSWORD"),
        ("track.uri", f"https://{SECRET}#x@mlflow.internal", "MLFLOW_TRACKING_TOKEN"),
        ("track.uri", f"postgresql://mlflow:{SECRET}/x@db.internal/mlflow", "PGPASSWORD"),
        ("train.storage_path", f"s3://AKIA1:{SECRET}/x+y@runs/fovea", "AWS_SECRET_ACCESS_KEY"),
    ],
)  # fmt: skip
def test_uris_with_credentials_are_refused_in_one_line(path, uri, where_instead):
    layer: dict = {}
    set_path(layer, path, uri)
    with pytest.raises(ConfigError) as refused:
        build_config([layer])
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert where_instead in message and "carries credentials" in message and MARKER in message
    assert SECRET not in message and "AKIA1" not in message


def test_redaction_hides_uri_credentials_in_any_text():
    from fovea.secrets import redact_uris

    for uri, shown in [
        (f"http://alice:{SECRET}/x@mlflow.internal/api", "http://***@mlflow.internal/api"),
        (f"http://alice:{SECRET}#x@host:5000", "http://***@host:5000"),
        (f"http://u:p@{SECRET}/x@host/runs?e=a@b", "http://***@host/runs?e=a@b"),
        (f"s3://b/k?access_key=AKIA1&secret_key={SECRET}&region=eu", "s3://b/k?access_key=***&secret_key=***&region=eu"),
    ]:  # fmt: skip
        assert redact_uris(f"could not reach {uri}, retrying") == f"could not reach {shown}, retrying"
        assert redact({"error": [f"({uri})"]}) == {"error": [f"({shown})"]}
    for text in ("http://host/models/x@v1", "s3://bucket/key@v1", "hdfs://fovea@namenode:8020/runs", "no uri",
                 "https://mlflow.internal?next=a@b", "http://[::1]:5000/x", "choice(s3://a, s3://b)"):  # fmt: skip
        assert redact_uris(text) == text and redact({"path": text}) == {"path": text}


def test_uris_without_credentials_pass():
    build_config(
        [
            {
                "data": {"path": "s3://datasets/k400?endpoint_override=minio.internal:9000&scheme=http"},
                "train": {"storage_path": "hdfs://fovea@namenode:8020/runs"},  # a user name is no credential
                "track": {"uri": "sqlite:////srv/mlflow/mlflow.db"},
                "distill": {"type": "soft", "teacher": "models:/teacher@champion"},
            }
        ]
    )


def test_a_tracking_uri_with_credentials_in_the_environment_is_refused(monkeypatch, capsys):
    from fovea.cli import main
    from fovea.track import resolve_tracking_uri
    from fovea.train import trainer

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://alice:{SECRET}@mlflow.internal")
    with pytest.raises(ConfigError, match=r"^MLFLOW_TRACKING_URI: https://\*\*\*@mlflow.internal carries"):
        resolve_tracking_uri()
    with pytest.raises(ConfigError, match=r"^tracking URI: http://\*\*\*@other carries"):
        resolve_tracking_uri(f"http://bob:{SECRET}@other")

    started = []
    monkeypatch.setattr(trainer, "check_before_start", lambda config: None)
    monkeypatch.setattr(trainer, "run_training", started.append)
    assert trainer.job_main("train_vit", VIT_PRESETS, argv=["--preset", "smoke"]) == 2
    assert started == []  # refused before Ray or anything else starts
    assert main(["models", "list"]) == 2
    err = capsys.readouterr().err
    assert err.count("MLFLOW_TRACKING_URI: https://***@mlflow.internal carries credentials") == 2
    assert SECRET not in err


def test_a_tuning_space_never_searches_a_secret(cfg):
    from fovea.tune.space import parse_space

    def space(entries: dict) -> Config:
        return build_config([cfg.model_dump(mode="json"), {"tune": {"space": entries}}])

    with pytest.raises(ConfigError) as refused:
        parse_space(space({"model.kwargs.api_token": f"choice({SECRET}, other)"}))
    assert str(refused.value).startswith("tune.space.model.kwargs.api_token: text values of a name that holds")
    with pytest.raises(ConfigError) as refused:
        parse_space(space({"model.kwargs.api_token": f"not a distribution {SECRET}"}))
    assert str(refused.value).startswith("tune.space.model.kwargs.api_token: not a distribution")
    assert SECRET not in str(refused.value)
    # names that merely look like secrets can be searched over numbers and booleans
    dimensions = parse_space(space({"model.kwargs.class_token": "choice(true, false)"}))
    assert [(d.path, d.args) for d in dimensions] == [("model.kwargs.class_token", (True, False))]


def test_the_mlflow_run_holds_no_secret(cfg, tmp_path):
    from fovea.track import RunLogger, ensure_experiment, start_sweep_run, trial_run

    uri = mlflow_store(tmp_path)
    experiment = ensure_experiment(uri, "secrets")
    raw = cfg.model_dump(mode="json")  # as a careless caller would hand it over: the tracking layer redacts
    logger = RunLogger(uri, run_id=None, experiment_id=experiment, run_name="r", params=flatten(raw),
                       tags={"fovea.job": "train_vit"}, fallback_dir=tmp_path / "fallback")  # fmt: skip
    logger.log_dict(raw, "config.yaml")
    assert logger.close("FINISHED", timeout=30) is None
    sweep = start_sweep_run(uri, experiment, sweep_name="s", params={"space.model.kwargs.api_token": SECRET, **raw},
                            tags={})  # fmt: skip
    for _ in range(2):  # the second call finds the trial's run and records its values as tags
        trial = trial_run(uri, experiment, parent_run_id=sweep, sweep_name="s", trial_id="t1", run_name="t1",
                          params={"tune.model.kwargs.api_token": SECRET, "tune.optim.lr": 0.01}, tags={})  # fmt: skip

    client = MlflowClient(uri)
    run = client.get_run(logger.run_id)
    assert ast.literal_eval(run.data.params["model.kwargs"]) == {
        "api_token": MARKER,
        "hub": {"url": "https://hub.internal", "password": MARKER},
        "class_token": False,
        "reg_tokens": 4,
    }
    stored = yaml.safe_load(Path(client.download_artifacts(logger.run_id, "config.yaml", str(tmp_path))).read_text())
    assert stored["model"]["kwargs"]["api_token"] == MARKER and stored["model"]["kwargs"]["reg_tokens"] == 4
    assert stored["model"]["name"] == "vit_micro_convstem_32"
    assert client.get_run(sweep).data.params["space.model.kwargs.api_token"] == MARKER
    trial_data = client.get_run(trial).data
    assert trial_data.params["tune.model.kwargs.api_token"] == MARKER and trial_data.params["tune.optim.lr"] == "0.01"
    assert trial_data.tags["fovea.current.tune.model.kwargs.api_token"] == MARKER
    store = tmp_path
    (store / "config.yaml").unlink()  # the copy downloaded above
    assert _files_holding(store, "vit_micro_convstem_32")  # the store's files are searchable as bytes
    for value in (SECRET, NESTED_SECRET, ENV_SECRET):
        assert _files_holding(store, value) == []  # the database and every artifact


def test_checkpoints_and_model_records_hold_no_secret(cfg, tmp_path):
    import mlflow

    from fovea.checkpoints import load_checkpoint
    from fovea.models import create_model, load_model_dir, save_model_dir
    from fovea.track import ensure_experiment, log_final_model
    from fovea.train.worker import save_training_checkpoint

    save_training_checkpoint(tmp_path, {"epoch": 1, "classes": ["a", "b"]}, cfg)
    state = load_checkpoint(tmp_path)
    assert json.loads(state["config"])["model"]["kwargs"]["api_token"] == MARKER
    assert json.loads(state["config"])["model"]["kwargs"]["class_token"] is False
    checkpoint_file = tmp_path / "checkpoint.pt"
    assert b"vit_micro_convstem_32" in checkpoint_file.read_bytes()  # torch.save stores the JSON text as it is
    _assert_hidden(checkpoint_file.read_bytes().decode("latin-1"))

    model = create_model("vit_micro_patch4_32", num_classes=2, img_size=32).eval()
    create_kwargs = {"num_classes": 2, "img_size": 32, "api_token": SECRET}
    uri = mlflow_store(tmp_path)
    run_id = MlflowClient(uri).create_run(ensure_experiment(uri, "secrets")).info.run_id
    version = log_final_model(uri, run_id, model, input_example=np.zeros((1, 3, 32, 32), dtype=np.float32),
                              registered_model_name="secret-vit", version_tags={"job": "train_vit"},
                              classes=["a", "b"], metadata={"model_name": "vit_micro_patch4_32",
                              "create_kwargs": create_kwargs})  # fmt: skip
    assert version == "1"
    info = mlflow.models.get_model_info("models:/secret-vit/1")
    assert info.metadata["create_kwargs"] == {"num_classes": 2, "img_size": 32, "api_token": MARKER}
    assert _files_holding(tmp_path, "vit_micro_patch4_32") and _files_holding(tmp_path, SECRET) == []

    bundle = tmp_path / "bundle"
    save_model_dir(bundle, model, {"model_name": "vit_micro_patch4_32", "create_kwargs": create_kwargs})
    written = json.loads((bundle / "fovea_model.json").read_text())
    assert written["create_kwargs"]["api_token"] == MARKER
    assert SECRET not in (bundle / "fovea_model.json").read_text()
    with pytest.raises(ValueError):  # a model that needs the secret cannot be rebuilt without it: it is not there
        load_model_dir(bundle)


def test_a_config_with_secrets_reaches_the_workers_through_the_object_store(cfg, monkeypatch):
    import ray

    from fovea.train.trainer import config_for_workers

    stored = []
    monkeypatch.setattr(ray, "put", lambda value: stored.append(value) or "ObjectRef(cafe)")
    plain = build_config([{"job": "train_vit"}])
    assert config_for_workers(plain) == plain.model_dump(mode="json") and stored == []  # shown in Ray's dashboard
    assert config_for_workers(cfg) == "ObjectRef(cafe)"  # Ray Train shows only the reference
    assert stored == [cfg.model_dump(mode="json")]  # the workers get the real values


def test_sweep_state_holds_no_secret_and_still_resumes(cfg, tmp_path):
    from fovea.tune.driver import STATE_FILE, check_same_sweep, write_state

    searched = {"tune": {"space": {"model.kwargs.class_token": "choice(true, false)"}}}
    swept = build_config([cfg.model_dump(mode="json"), searched])
    write_state(tmp_path, swept)
    saved = (tmp_path / STATE_FILE).read_text()
    _assert_hidden(saved)
    assert json.loads(saved)["config"]["tune"]["space"] == {"model.kwargs.class_token": MARKER}
    check_same_sweep(tmp_path, swept)  # the same sweep resumes: it is compared as it was saved
    other = build_config([swept.model_dump(mode="json"), {"tune": {"scheduler": "fifo"}}])
    with pytest.raises(ConfigError, match="tune.scheduler: sweep"):
        check_same_sweep(tmp_path, other)
