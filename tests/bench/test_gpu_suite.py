"""benchmarks/gpu_suite.py, without a GPU: every run is a valid benchmark command, and the summary reads both kinds
of result the benchmark writes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def suite():
    return _load(ROOT / "benchmarks" / "gpu_suite.py", "gpu_suite")


def test_every_run_is_a_valid_gpu_benchmark_config(suite):
    from fovea.models import is_video_model
    from fovea.models.factory import list_models

    job = _load(ROOT / "jobs" / "benchmark.py", "benchmark_job")
    known = set(list_models())
    groups = {group for group, _ in suite.RUNS.values()}
    assert groups == {"images", "video", "ingest"}
    for name, (group, argv) in suite.RUNS.items():
        args = job.parse_args(argv)
        cfg = job.build_benchmark_config(args, gpu=True)  # raises ConfigError on a bad override
        assert cfg.model.name in known, (name, cfg.model.name)
        assert cfg.scaling.use_gpu and cfg.model.img_size == 224, name
        assert is_video_model(cfg.model.name) == (group == "video" or name == "ingest_mvit"), name
    # the sizes
    assert job.parse_args(suite.RUNS["vit_b_compiled"][1]).batch_size == 256
    assert job.parse_args(suite.RUNS["mvit_b_checkpointed"][1]).batch_size == 32
    mvit = job.build_benchmark_config(job.parse_args(suite.RUNS["mvit_b_compiled"][1]), gpu=True)
    assert (mvit.data.num_frames, mvit.data.frame_interval, mvit.data.batch_size) == (16, 4, 16)


def test_list_and_unknown_runs(suite, capsys):
    assert suite.main(["video", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == [n for n, (g, _) in suite.RUNS.items() if g == "video"]
    with pytest.raises(SystemExit):
        suite.main(["--only", "vit_b_huge", "--list"])
    assert "unknown run(s) vit_b_huge" in capsys.readouterr().err


def test_summary_reads_training_and_ingest_results(suite, tmp_path):
    training = {
        "paths": [
            {"name": "plain loop", "samples_per_s": 3426.0, "mfu": 0.461, "peak_memory_mb": 30000.0},
            {"name": "fovea full path", "samples_per_s": 3390.5, "mfu": 0.456, "peak_memory_mb": 31000.0},
        ],
        "ratio": 3390.5 / 3426.0,
    }
    ingest = {
        "paths": [
            {"name": name, "warm_items_per_s": rate, "peak_mb": 2000.0}
            for name, rate in (("Ray Data", 5200.0), ("DataLoader", 4800.0), ("DataLoader, persistent workers", 5000.0))
        ],
        "ratio": 5200 / 4800,
        "ratio_persistent": 5200 / 5000,
    }
    (tmp_path / "vit_b_compiled.json").write_text(json.dumps(training))
    (tmp_path / "ingest_images.json").write_text(json.dumps(ingest))
    table = suite.summarize(["vit_b_compiled", "ingest_images", "deit_s"], tmp_path).splitlines()
    assert table[2] == "| vit_b_compiled | plain loop | 3426.0 | 46.1% | 30000 MiB |  |"
    assert table[3] == "| vit_b_compiled | fovea full path | 3390.5 | 45.6% | 31000 MiB | 0.990 |"
    assert table[4] == "| ingest_images | Ray Data | 5200.0 | | 2000 MiB PSS | 1.08x / 1.04x |"
    assert table[6].startswith("| ingest_images | DataLoader, persistent workers | 5000.0 |")
    assert table[7] == "| deit_s | (no result: see deit_s.log) | | | | |"
