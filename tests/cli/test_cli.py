"""The ``fovea`` command against a real SQLite store: registry tables, promotion, download, runs and datasets."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from fovea.cli import Column, main, render_table
from fovea.data.manifest import manifest_hash
from fovea.models import create_model, load_model_dir
from fovea.track import ensure_experiment, log_final_model

MODEL = "vit_micro_patch4_32"
CLASSES = ["red", "green", "blue"]
NAME = "tiny-vit"


@dataclass
class Store:
    """A tracking store with two registered versions of ``NAME`` (champion 1, challenger 2) and three runs."""

    uri: str
    run_ids: list[str]  # fovea: run 1 (v1), run 2 (v2); other: run 3
    models: list[torch.nn.Module]  # the modules registered as versions 1 and 2


def _fixed_batch() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def build_store(root: Path) -> Store:
    """Two trained-looking runs in experiment ``fovea``, each registering a version of ``NAME`` with different
    weights, one run in experiment ``other``, and a version of ``legacy-vit`` registered without create_kwargs."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = ensure_experiment(uri, "fovea")
    run_ids, models = [], []
    example = np.zeros((1, 3, 32, 32), dtype=np.float32)
    for index, (lr, top1) in enumerate([(0.001, 81.25), (0.003, 90.5)], start=1):
        run = client.create_run(
            experiment,
            run_name=f"vit-run-{index}",
            tags={
                "fovea.role": "train",
                "fovea.model": MODEL,
                "fovea.dataset": "/data/colours/prepared",
                "fovea.manifest_hash": "0123456789abcdef",
                "fovea.git_commit": f"{index}" * 40,
                "fovea.recipe_hash": f"recipe{index}",
            },
        )
        run_id = run.info.run_id
        client.log_param(run_id, "optim.lr", lr)
        client.log_param(run_id, "data.batch_size", 32)
        for epoch in (1, 2, 3):
            client.log_metric(run_id, "epoch", epoch, step=epoch)
            client.log_metric(run_id, "val_top1", top1 - 10 * (3 - epoch), step=epoch)
            client.log_metric(run_id, "val_top5", 100.0, step=epoch)
        torch.manual_seed(index)
        model = create_model(MODEL, num_classes=3, img_size=32).eval()
        log_final_model(
            uri,
            run_id,
            model,
            input_example=example,
            registered_model_name=NAME,
            version_tags={
                "architecture": "VisionTransformer",
                "model_name": MODEL,
                "dataset": "/data/colours/prepared",
                "manifest_hash": "0123456789abcdef",
                "val_top1": f"{top1:.2f}",
                "val_top5": "100.00",
                "epochs": "3",
                "params": "49091",
                "gmacs": "0.003",
                "git_commit": f"{index}" * 40,
            },
            classes=CLASSES,
            metadata={
                "model_name": MODEL,
                "create_kwargs": {"num_classes": 3, "img_size": 32},
                "img_size": 32,
                "mean": [0.5, 0.5, 0.5],
                "std": [0.25, 0.25, 0.25],
            },
            alias="champion" if index == 1 else "challenger",
        )
        client.set_terminated(run_id)
        run_ids.append(run_id)
        models.append(model)
    other = client.create_run(ensure_experiment(uri, "other"), run_name="other-run", tags={"fovea.role": "eval"})
    client.log_metric(other.info.run_id, "val_top1", 42.0)
    run_ids.append(other.info.run_id)
    legacy = client.create_run(experiment, run_name="legacy-run").info.run_id
    torch.manual_seed(7)
    log_final_model(
        uri,
        legacy,
        create_model(MODEL, num_classes=3, img_size=32).eval(),
        input_example=example,
        registered_model_name="legacy-vit",
        version_tags={"model_name": MODEL},
        classes=CLASSES,
        metadata={"model_name": MODEL, "img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
    )
    return Store(uri=uri, run_ids=run_ids, models=models)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """Shared by the tests that only read it."""
    return build_store(tmp_path_factory.mktemp("store"))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_promote_then_download_through_the_console_script(tmp_path, capsys):
    built = build_store(tmp_path)
    script = Path(sys.executable).parent / "fovea"
    assert script.is_file(), "pip install -e . installs the fovea console script"

    def fovea(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(script), "--tracking-uri", built.uri, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )

    promoted = fovea("models", "promote", NAME, "2", "--alias", "champion")
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.strip() == f"{NAME}@champion: version 1 -> 2"
    client = MlflowClient(built.uri, registry_uri=built.uri)
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert champion.version == 2 and champion.tags["promoted_by"] and champion.tags["promoted_at"]

    target = tmp_path / "downloaded"
    downloaded = fovea("models", "download", f"{NAME}@champion", str(target))
    assert downloaded.returncode == 0, downloaded.stderr
    assert "load_model_dir" in downloaded.stdout and str(target) in downloaded.stdout

    model, info = load_model_dir(target)  # weights_only=True: no pickle involved
    assert info["registered_name"] == NAME and info["version"] == "2" and "champion" in info["aliases"]
    assert info["model_name"] == MODEL and info["create_kwargs"] == {"num_classes": 3, "img_size": 32}
    assert info["classes"] == CLASSES and info["std"] == [0.25] * 3 and info["img_size"] == 32
    assert info["run_id"] == built.run_ids[1] and info["tags"]["val_top1"] == "90.50"
    batch = _fixed_batch()
    with torch.no_grad():
        predictions = model(batch)
        assert torch.allclose(predictions, built.models[1](batch))
        assert not torch.allclose(predictions, built.models[0](batch), atol=1e-3)

    import mlflow.pytorch

    registered = mlflow.pytorch.load_model(str(target / "mlflow_model"), map_location="cpu")
    with torch.no_grad():
        assert torch.allclose(registered.eval()(batch), predictions)

    capsys.readouterr()
    code, _, error = run_cli(
        capsys, "--tracking-uri", built.uri, "models", "download", f"models:/{NAME}/1", str(target)
    )
    assert code == 2 and len(error.strip().splitlines()) == 1 and "--force" in error
    assert load_model_dir(target)[1]["version"] == "2"  # the earlier download is left as it was


def test_download_refuses_versions_without_a_pickle_free_copy(store, tmp_path, capsys):
    # legacy-vit records no create_kwargs, so it has no weights.pt + fovea_model.json: only MLflow's pickle, which
    # fovea never loads
    code, out, err = run_cli(capsys, "--tracking-uri", store.uri, "models", "download", "legacy-vit/1", str(tmp_path))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "models:/legacy-vit/1: version 1 has no pickle-free weights" in err and "never unpickles" in err
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_models_list_show_and_versions(store, capsys):
    code, out, _ = run_cli(capsys, "--tracking-uri", store.uri, "models", "list")
    assert code == 0
    header, *rows = out.strip().splitlines()
    assert header.split()[:3] == ["name", "versions", "latest"]
    row = next(line for line in rows if line.startswith(NAME))
    assert row.split()[1:3] == ["2", "2"] and "champion=1" in row and "challenger=2" in row and "81.25" in row
    assert any(line.startswith("legacy-vit") for line in rows)

    code, out, _ = run_cli(capsys, "models", "list", "--json", "--tracking-uri", store.uri)  # options after too
    listed = {model["name"]: model for model in json.loads(out)}
    assert listed[NAME]["aliases"] == {"challenger": "2", "champion": "1"}
    assert listed[NAME]["versions"] == 2 and listed[NAME]["champion_val_top1"] == 81.25

    code, out, _ = run_cli(capsys, "--tracking-uri", store.uri, "models", "show", NAME)
    assert code == 0
    assert "version 1 (champion)" in out and store.run_ids[0] in out and "models:/m-" in out
    assert "val_top1" in out and "81.25" in out and "challenger=2 champion=1" in out
    code, out, _ = run_cli(capsys, "--tracking-uri", store.uri, "--json", "models", "show", f"{NAME}@challenger")
    shown = json.loads(out)
    assert shown["version"]["version"] == "2" and shown["version"]["tags"]["val_top1"] == "90.50"

    code, out, _ = run_cli(capsys, "--tracking-uri", store.uri, "models", "versions", NAME)
    header, newest, oldest = out.strip().splitlines()
    assert header.split() == [
        "version", "aliases", "created", "val_top1", "val_top5", "params", "gmacs", "dataset", "manifest_hash",
        "git_commit", "run", "status",
    ]  # fmt: skip
    assert newest.split()[:2] == ["2", "challenger"] and "90.50" in newest and "22222222" in newest
    assert oldest.split()[:2] == ["1", "champion"] and "81.25" in oldest and store.run_ids[0][:8] in oldest
    assert "49.09K" in oldest and "colours/prepared" in oldest and "READY" in oldest
    code, out, _ = run_cli(capsys, "--tracking-uri", store.uri, "--json", "models", "versions", NAME)
    versions = json.loads(out)
    assert [v["version"] for v in versions] == ["2", "1"]
    assert versions[1]["tags"]["git_commit"] == "1" * 40 and versions[1]["run_id"] == store.run_ids[0]


def test_runs_list_and_compare(store, capsys):
    code, out, _ = run_cli(capsys, "--tracking-uri", store.uri, "runs", "list")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["run", "name", "run", "id"]
    assert [line.split()[0] for line in lines[1:]] == ["legacy-run", "vit-run-2", "vit-run-1"]  # newest first
    second = next(line for line in lines if line.startswith("vit-run-2"))
    assert store.run_ids[1][:8] in second and "train" in second and "90.50" in second and "100.00" in second
    assert f"{NAME}/2" in second and " 3 " in second  # its registered version, its last epoch
    assert "other-run" not in out

    code, out, _ = run_cli(capsys, "--tracking-uri", store.uri, "--json", "runs", "list", "--experiment", "other")
    (other,) = json.loads(out)
    assert other["run_name"] == "other-run" and other["val_top1"] == 42.0 and other["role"] == "eval"
    code, out, _ = run_cli(capsys, "--tracking-uri", store.uri, "--json", "runs", "list", "--experiment", "all")
    assert len(json.loads(out)) == 4
    code, out, _ = run_cli(
        capsys, "--tracking-uri", store.uri, "--json", "runs", "list", "--filter", "metrics.val_top1 > 85"
    )
    assert [run["run_name"] for run in json.loads(out)] == ["vit-run-2"]

    first, second = store.run_ids[0][:6], store.run_ids[1]
    code, out, err = run_cli(capsys, "--tracking-uri", store.uri, "runs", "compare", first, second)
    assert code == 0, err
    assert "optim.lr" in out and "0.001" in out and "0.003" in out
    assert "data.batch_size" not in out  # equal params only with --all
    val_top1 = next(line for line in out.splitlines() if line.startswith("val_top1"))
    assert val_top1.split() == ["val_top1", "81.25", "90.50", "+9.25"]
    assert "recipe1" in out and "recipe2" in out
    code, out, _ = run_cli(
        capsys, "--tracking-uri", store.uri, "--json", "runs", "compare", first, "vit-run-2", "--all"
    )
    compared = json.loads(out)
    assert compared["params"]["data.batch_size"] == ["32", "32"]
    assert compared["metrics"]["val_top1"]["difference"] == pytest.approx(9.25)
    assert [run["run_id"] for run in compared["runs"]] == store.run_ids[:2]


def test_runs_sync_replays_a_fallback_file(store, tmp_path, capsys):
    client = MlflowClient(store.uri, registry_uri=store.uri)
    run_id = client.create_run(ensure_experiment(store.uri, "fovea"), run_name="outage").info.run_id
    fallback = tmp_path / f"{run_id}.jsonl"
    lines = [{"run_id": run_id, "tracking_uri": store.uri, "status": "FINISHED"}]
    lines += [
        {"metric": {"key": "val_top1", "value": 50.0 + step, "timestamp": 1_700_000_000_000 + step, "step": step}}
        for step in (4, 5)
    ]
    fallback.write_text("".join(json.dumps(line) + "\n" for line in lines))

    code, out, err = run_cli(capsys, "runs", "sync", str(fallback))  # the store recorded in the file
    assert code == 0, err
    assert "sent 2 metrics" in out and run_id in out
    history = client.get_metric_history(run_id, "val_top1")
    assert [(metric.step, metric.value) for metric in history] == [(4, 54.0), (5, 55.0)]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert not fallback.exists() and fallback.with_name(fallback.name + ".sent").is_file()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["models", "show", "no-such-model"], "no registered model 'no-such-model' (registered models: legacy-vit"),
        (["models", "versions", "no-such-model"], "no registered model"),
        (["models", "promote", NAME, "9"], "has no version '9' (versions: 1, 2)"),
        (["models", "promote", "no-such-model", "1"], "no registered model"),
        (["models", "download", f"{NAME}@gold", "unused"], "has no alias 'gold' (aliases: challenger=2, champion=1)"),
        (["models", "download", NAME, "unused"], "is not NAME@ALIAS"),
        (["runs", "compare", "feedbeef00", "vit-run-1"], "no run id or run name matches 'feedbeef00'"),
        (["runs", "compare", "0" * 32, "vit-run-1"], "no run 00000000"),
        (["runs", "list", "--experiment", "nope"], "no experiment 'nope' (experiments: "),
        (["runs", "list", "--filter", "metrics.val_top1 >> 3"], "searching runs: Invalid comparator"),
        (["runs", "sync", "missing.jsonl"], "missing.jsonl: no such file"),
        (["models", "promot", NAME], "invalid choice: 'promot'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(store, capsys, argv, expected):
    code, out, err = run_cli(capsys, "--tracking-uri", store.uri, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and expected in err, err


def test_a_missing_default_store_is_an_error_not_a_new_store(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "models", "list")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{tmp_path / 'mlflow.db'} does not exist" in err
    assert not (tmp_path / "mlflow.db").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    code, out, err = run_cli(capsys, "runs", "list")
    assert code == 2 and "$MLFLOW_TRACKING_URI" in err and not (tmp_path / "elsewhere.db").exists()


def _write_dataset(folder: Path, kind: str, counts: dict[str, int], rejected: int) -> Path:
    """A dataset folder as the prepare pipelines leave it, without the Parquet shards' contents."""
    folder.mkdir(parents=True)
    manifest = {
        "format": "fovea-dataset/1",
        "kind": kind,
        "classes": CLASSES,
        "splits": {name: {"count": count, "shards": [f"{name}/part-00000.parquet"]} for name, count in counts.items()},
        "rejected": [{"path": f"/raw/red/{index}.jpg", "reason": "cannot decode"} for index in range(rejected)],
        "source": "/raw",
        "created": "2026-01-01T00:00:00+00:00",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_datasets_list_and_show(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    monkeypatch.setenv("FOVEA_HOME", str(home))
    images = _write_dataset(home / "datasets" / "colours" / "prepared", "image", {"train": 90, "val": 10}, 2)
    _write_dataset(home / "datasets" / "clips" / "v1" / "prepared", "video", {"train": 12, "val": 4}, 0)
    (home / "datasets" / "colours" / "raw" / "red").mkdir(parents=True)

    code, out, _ = run_cli(capsys, "datasets", "list")
    assert code == 0
    rows = [line.split() for line in out.strip().splitlines()[2:]]
    assert rows == [
        ["clips/v1/prepared", "video", "3", "train=12", "val=4", "0"],
        ["colours/prepared", "image", "3", "train=90", "val=10", "2"],
    ]
    code, out, _ = run_cli(capsys, "--json", "datasets", "list", "--root", str(home / "datasets" / "colours"))
    (listed,) = json.loads(out)
    assert listed["path"] == str(images) and listed["splits"] == {"train": 90, "val": 10} and listed["rejected"] == 2

    code, out, _ = run_cli(capsys, "datasets", "show", str(images))
    assert code == 0
    assert manifest_hash(images) in out and "train: 90 images in 1 shard(s)" in out
    assert "classes (3): red, green, blue" in out and "rejected: 2" in out and "cannot decode" in out
    code, out, _ = run_cli(capsys, "--json", "datasets", "show", str(images))
    assert json.loads(out)["manifest_hash"] == manifest_hash(images)

    code, out, err = run_cli(capsys, "datasets", "show", str(tmp_path / "nowhere"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "does not exist" in err


def test_render_table_aligns_truncates_and_formats():
    rows = [{"name": "a-very-long-model-name", "top1": 95.5, "when": "2026-01-02T03:04:05+00:00", "aliases": None}]
    columns = [
        Column("name", "name", width=10),
        Column("top1", "top1", right=True),
        Column("when", "when", render=lambda value: value[:10]),
        Column("aliases", "aliases"),
    ]
    header, row = render_table(rows, columns).splitlines()
    assert row.split() == ["a-very-lo…", "95.50", "2026-01-02", "-"]
    assert header.index("top1") + len("top1") == row.index("95.50") + len("95.50")  # right-aligned under the header


def test_listing_imports_neither_torch_nor_ray(store):
    """``fovea runs list`` / ``models list`` stay quick: no torch, Ray or the model code is imported for them, nor
    MLflow for a SQLite store listed without a filter (``fovea.track.fast_browse`` reads its tables)."""
    script = (
        "import json, sys\n"
        "from fovea.cli import main\n"
        f"codes = [main(['runs', 'list', '--tracking-uri', {store.uri!r}]),"
        f" main(['models', 'list', '--tracking-uri', {store.uri!r}])]\n"
        "heavy = ('torch', 'ray', 'timm', 'torchvision', 'fovea.models', 'mlflow')\n"
        "heavy = sorted(m for m in heavy if m in sys.modules)\n"
        "print(json.dumps({'codes': codes, 'heavy': heavy}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert "vit-run-2" in done.stdout and NAME in done.stdout  # both listings printed
    assert json.loads(lines[-1]) == {"codes": [0, 0], "heavy": []}
