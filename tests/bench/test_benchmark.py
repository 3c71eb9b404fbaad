"""``jobs/benchmark.py`` on the CPU at toy sizes: both paths run and the figures hang together."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "benchmark.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )


def _job():
    """jobs/benchmark.py as a module, to run its main() in this process on the module's Ray."""
    spec = importlib.util.spec_from_file_location("benchmark_job", ROOT / "jobs" / "benchmark.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job


@pytest.fixture
def keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the benchmark sets the worker's thread count in this process


@pytest.mark.slow
@pytest.mark.long  # `pytest -m long` (a Ray Train run and a plain loop: not in the default run)
def test_benchmark_plain_loop_against_the_full_path_with_device_decoding(
    ray_local, tmp_path, capsys, keep_torch_threads
):
    out = tmp_path / "bench.json"
    # JPEGs decoded on the "device" (the CPU here): the full path's worker runs decode_batch
    args = ["--steps", "6", "--warmup", "2", "--val-samples", "16", "--device", "cpu", "--json", str(out)]
    assert _job().main([*args, "data.jpeg_decode=device", "scaling.cpus_per_worker=1"]) == 0
    stdout = capsys.readouterr().out
    report = json.loads(out.read_text())
    plain, full = report["paths"]
    assert (plain["name"], full["name"]) == ("plain loop", "fovea full path")
    assert report["model"] == "vit_micro_patch4_32" and report["device"] == "cpu" and report["cpu_threads"] == 1
    assert report["jpeg_decode"] == "device" and report["compile"] is False
    assert full["samples"] == 6 * 32 and plain["samples"] == 6 * 32  # the measured epoch has --steps steps
    assert report["ratio"] == pytest.approx(full["samples_per_s"] / plain["samples_per_s"])
    flops, peak = report["train_gflops_per_sample"] * 1e9, report["peak_tflops"] * 1e12
    for path in (plain, full):
        assert path["samples_per_s"] > 0 and path["peak_memory_mb"] > 100
        assert path["mfu"] == pytest.approx(path["samples_per_s"] * flops / peak)
        assert 0 < path["mfu"] < 1
    assert 0.2 < report["train_gflops_per_sample"] < 0.4  # the micro ViT at 32 px: 0.29 GFLOP counted
    assert "ratio fovea / plain loop" in stdout and "MFU" in stdout


@pytest.mark.slow
def test_benchmark_ingest_only_compares_ray_data_with_a_dataloader(ray_local, tmp_path, capsys):
    # in this process, on the module's Ray (run_benchmark uses a running Ray as it is)
    out = tmp_path / "ingest.json"
    assert (
        _job().main(
            ["--ingest-only", "--steps", "4", "--workers", "2", "--rounds", "2", "--device", "cpu", "--json", str(out)]
        )
        == 0
    )
    report = json.loads(out.read_text())
    ray_data, loader, persistent = report["paths"]
    assert [path["name"] for path in report["paths"]] == ["Ray Data", "DataLoader", "DataLoader, persistent workers"]
    assert report["rows"] >= 4 * 32
    # every row, both epochs of both rounds, nothing lost
    assert ray_data["items"] == loader["items"] == persistent["items"] == 2 * 2 * report["rows"]
    assert len(ray_data["epoch_seconds"]) == 4 and ray_data["round_starts"] == [0, 2]
    # each round's ratio over its warm epoch (the second), the median of the two
    for name, index in (("round_ratios", 1), ("round_ratios_persistent", 2)):
        rates = [report["paths"][i]["epoch_seconds"] for i in (0, index)]
        expected = [rates[1][epoch] / rates[0][epoch] for epoch in (1, 3)]
        assert report[name] == pytest.approx(expected)
    assert report["ratio"] == pytest.approx(sum(report["round_ratios"]) / 2)
    assert report["ratio_persistent"] == pytest.approx(sum(report["round_ratios_persistent"]) / 2)
    printed = capsys.readouterr().out
    assert "ratio Ray Data / DataLoader: " in printed and "with persistent workers: " in printed


def test_benchmark_rejects_a_bad_override(tmp_path):
    result = _run("--plain-only", "train.compile_mode=fastest", tmp_path=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("benchmark: config error: train.compile_mode")
