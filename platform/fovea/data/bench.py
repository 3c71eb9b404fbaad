"""Ingest benchmarks: the Ray Data path against a torch DataLoader doing the same work, decoder memory, and the
video decoders against each other on the same clips (:func:`compare_backends`).

Both paths run the exact same per-row code (:class:`~fovea.data.clips.DecodeClips` or
:class:`~fovea.data.transforms.DecodeImages` on the rows of the prepared shards) in the same number of worker
processes, and deliver uint8 batches to a consumer in this process that does nothing with them, so the
comparison is of the data machinery alone: Ray Data's streaming read -> ``map_batches`` -> ``iter_torch_batches``
against a map-style ``Dataset`` over the same Parquet rows with a shuffled ``DataLoader``.

Memory is sampled as the PSS (proportional set size) of this process and all its descendants: Ray's object store
is shared memory mapped into many processes, and summing their RSS would count it many times over.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from fovea.console import format_rate


class TreeMemory:
    """Samples the memory of this process and its descendants in a background thread; keeps the peak.

    Use as a context manager; ``peak_mb`` and ``baseline_mb`` (at entry) are in MiB.
    """

    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self.peak_mb = self.baseline_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def current_mb() -> float:
        """PSS (RSS where PSS is unavailable) of this process tree, in MiB."""
        import psutil

        root = psutil.Process()
        total = 0
        for process in [root, *root.children(recursive=True)]:
            try:
                info = process.memory_full_info()
                total += getattr(info, "pss", info.rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return total / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, self.current_mb())

    def __enter__(self) -> TreeMemory:
        self.baseline_mb = self.peak_mb = self.current_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, self.current_mb())


@dataclass
class IngestResult:
    """Throughput of one ingest path, over one or more rounds of epochs."""

    name: str
    items: int
    epoch_seconds: list[float]
    first_batch_s: float
    peak_mb: float
    baseline_mb: float
    round_starts: list[int] = field(default_factory=lambda: [0])  # the cold epochs: each round's first

    @property
    def items_per_s(self) -> float:
        """Items per second over all epochs, start-up of each epoch included."""
        return self.items / max(1e-9, sum(self.epoch_seconds))

    @property
    def warm_items_per_s(self) -> float:
        """Items per second over the epochs after each round's first (which also pays for worker start-up)."""
        warm = [s for index, s in enumerate(self.epoch_seconds) if index not in self.round_starts]
        if not warm:
            return self.items_per_s
        per_epoch = self.items / len(self.epoch_seconds)
        return per_epoch * len(warm) / max(1e-9, sum(warm))


def consume(batches: Iterable[dict[str, torch.Tensor]], key: str) -> tuple[int, float]:
    """Pull every batch; returns ``(items, seconds to the first batch)``. Touches each batch so nothing is lazy."""
    start, first, items = time.perf_counter(), None, 0
    for batch in batches:
        if first is None:
            first = time.perf_counter() - start
        tensor = batch[key]
        assert tensor.dtype == torch.uint8, tensor.dtype
        items += tensor.shape[0]
    return items, first or 0.0


def measure(
    name: str, make_batches: Callable[[], Iterable[dict[str, torch.Tensor]]], key: str, epochs: int
) -> IngestResult:
    """Run ``epochs`` passes over ``make_batches()`` under a memory sampler."""
    seconds, items, first_batch = [], 0, 0.0
    gc.collect()
    with TreeMemory() as memory:
        for epoch in range(epochs):
            start = time.perf_counter()
            count, first = consume(make_batches(), key)
            seconds.append(time.perf_counter() - start)
            items += count
            if epoch == 0:
                first_batch = first
    return IngestResult(name, items, seconds, first_batch, memory.peak_mb, memory.baseline_mb)


class ParquetRows(torch.utils.data.Dataset):
    """Map-style dataset over the rows of Parquet shards, each passed through a one-row ``map_batches`` function.

    The tables are opened lazily in each DataLoader worker (memory-mapped), as a hand-written loader would.
    """

    def __init__(self, shards: list[str], columns: list[str], decode: Callable[[dict], dict], key: str) -> None:
        self.shards, self.columns, self.decode, self.key = shards, columns, decode, key
        self.num_rows = sum(pq.ParquetFile(shard).metadata.num_rows for shard in shards)
        self._table = None

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        if self._table is None:
            import pyarrow as pa

            tables = [pq.read_table(shard, columns=self.columns, memory_map=True) for shard in self.shards]
            self._table = pa.concat_tables(tables)
        row = self._table.slice(index, 1).to_pydict()
        batch = {
            name: np.asarray(values, dtype=object if isinstance(values[0], bytes) else None)
            for name, values in row.items()
        }
        out = self.decode(batch)
        if out[self.key].shape[0] == 0:  # a row that no longer decodes: skipped, as the Ray path skips it
            return None
        return {self.key: torch.from_numpy(out[self.key][0]), "label": torch.as_tensor(out["label"][0])}


def collate_decoded(items: list[dict[str, Any] | None]) -> dict[str, torch.Tensor]:
    """``default_collate`` over the items that decoded (``ParquetRows`` returns None for the others)."""
    return torch.utils.data.default_collate([item for item in items if item is not None])


def rss_over_decodes(
    rows: list[dict], decode: Callable[[dict, int], Any], total: int, every: int = 100
) -> list[tuple[int, float]]:
    """Decode ``total`` clips in this process, cycling over ``rows``; ``(decodes, RSS MiB)`` every ``every`` decodes."""
    import psutil

    process = psutil.Process(os.getpid())
    samples = [(0, process.memory_info().rss / 2**20)]
    for count in range(1, total + 1):
        decode(rows[count % len(rows)], count)
        if count % every == 0:
            samples.append((count, process.memory_info().rss / 2**20))
    return samples


def run_benchmark(
    manifest: dict[str, Any],
    data_cfg: Any,
    *,
    kind: str,
    img_size: int,
    workers: int,
    epochs: int,
    rounds: int = 1,
    rss_decodes: int = 0,
) -> dict[str, Any]:
    """Time the Ray Data path and two DataLoader baselines over the training split; optionally trace decoder RSS.

    The paths take turns, ``rounds`` times: Ray Data, a ``DataLoader`` with its default worker processes (started
    again each epoch), a ``DataLoader`` with ``persistent_workers=True``; each runs ``epochs`` epochs per round.
    Taking turns spreads slow drifts of the machine (other tenants, clock changes) over all three, and the ratios
    are medians over the rounds. Ray is started here with ``workers`` CPUs for each Ray Data round and shut down
    after it, so Ray's own processes take no CPU from the DataLoader rounds (a Ray already running is used as it
    is and left running); each DataLoader gets ``workers`` processes.

    Returns:
        ``{"paths": [ray_data, dataloader, dataloader_persistent], "ratio": median over rounds of Ray Data / default
        DataLoader items per second over the warm epochs (all but each round's first), "ratio_persistent": the
        same against the persistent-worker DataLoader, "round_ratios" / "round_ratios_persistent": each round's,
        "ratio_all_epochs": the overall rates' ratio counting every epoch, "rss_trace": [(n, MiB)],
        "rss_growth_mb": ...}`` (the RSS keys only with ``rss_decodes``). Each path's ``epoch_seconds`` holds its
        epochs of every round in order.
    """
    if epochs < 1 or rounds < 1:
        raise ValueError(f"epochs and rounds must be at least 1 (got {epochs}, {rounds})")
    shards = manifest["splits"]["train"]["shards"]
    _warm_page_cache(shards)
    key, columns, decode = _row_decoder(manifest, data_cfg, kind=kind, img_size=img_size)
    rows = ParquetRows(shards, columns, decode, key)
    per_round: list[list[IngestResult]] = []
    for _ in range(rounds):
        per_round.append(
            [
                _ray_round(manifest, data_cfg, kind=kind, img_size=img_size, workers=workers, epochs=epochs, key=key),
                _loader_round(rows, data_cfg, workers=workers, epochs=epochs, key=key, persistent=False),
                _loader_round(rows, data_cfg, workers=workers, epochs=epochs, key=key, persistent=True),
            ]
        )
    results = _summarize(per_round, rounds=rounds)
    if rss_decodes and kind == "video":
        results.update(_rss_growth(shards[0], columns, decode, rss_decodes))
    return results


def _warm_page_cache(shards: list[str]) -> None:
    """Read every shard once, so neither path pays for the first read from disk."""
    for shard in shards:
        with open(shard, "rb") as file:
            while file.read(1 << 24):
                pass


def _row_decoder(manifest: dict[str, Any], data_cfg: Any, *, kind: str, img_size: int) -> tuple[str, list[str], Any]:
    """``(key, columns, decode)``: the decoded column, the stored columns read, and the training-time row decoder."""
    from fovea.data.clips import DecodeClips, clip_columns
    from fovea.data.stream import augment_args, clip_spec
    from fovea.data.transforms import DecodeImages

    if kind == "video":
        spec = clip_spec(data_cfg, img_size=img_size, num_frames=data_cfg.num_frames)
        decode = DecodeClips(
            spec,
            train=True,
            storage=manifest.get("storage", "encoded"),
            backend=data_cfg.video_backend,
            decode_threads=data_cfg.decode_threads,
        )
        return "video", clip_columns(manifest), decode
    decode = DecodeImages(img_size, train=True, background=data_cfg.alpha_rgb, **augment_args(data_cfg))
    return "image", ["image", "label"], decode


def _ray_round(
    manifest: dict[str, Any], data_cfg: Any, *, kind: str, img_size: int, workers: int, epochs: int, key: str
) -> IngestResult:
    """One round of the Ray Data path, in a Ray started for it with ``workers`` CPUs (unless one is running)."""
    import ray

    from fovea.data.stream import build_image_datasets, build_video_datasets, configure_data_context

    started_ray = not ray.is_initialized()
    if started_ray:
        # address="local": its own Ray even when a `ray start` cluster runs here (which would refuse num_cpus)
        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)  # fmt: skip
        from fovea.console import rearm_signals

        rearm_signals()  # ray.init replaced the SIGTERM handler
    try:
        configure_data_context()
        if kind == "video":
            build = build_video_datasets(manifest, data_cfg, img_size=img_size, num_frames=data_cfg.num_frames)
        else:
            build = build_image_datasets(manifest, data_cfg, img_size=img_size)
        train = build["train"]
        return measure(
            "Ray Data",
            lambda: train.iter_torch_batches(batch_size=data_cfg.batch_size, prefetch_batches=2, device="cpu"),
            key,
            epochs,
        )
    finally:
        if started_ray:
            ray.shutdown()


def _loader_round(
    rows: ParquetRows, data_cfg: Any, *, workers: int, epochs: int, key: str, persistent: bool
) -> IngestResult:
    """One round of a shuffled ``DataLoader`` over ``rows`` with ``workers`` processes."""
    loaders = [
        torch.utils.data.DataLoader(
            rows,
            batch_size=data_cfg.batch_size,
            shuffle=True,
            num_workers=workers,
            prefetch_factor=2,
            persistent_workers=persistent,
            collate_fn=collate_decoded,
        )
    ]
    name = "DataLoader, persistent workers" if persistent else "DataLoader"
    result = measure(name, lambda: loaders[0], key, epochs)
    loaders.clear()  # persistent workers exit with their loader, before the next path's turn
    gc.collect()
    return result


def _summarize(per_round: list[list[IngestResult]], *, rounds: int) -> dict[str, Any]:
    """The paths (rounds combined) and the Ray Data / DataLoader ratios of :func:`run_benchmark`."""
    paths = [_combine([results[index] for results in per_round]) for index in range(3)]

    def ratios(baseline: int) -> list[float]:
        return [results[0].warm_items_per_s / max(1e-9, results[baseline].warm_items_per_s) for results in per_round]

    return {
        "paths": [
            {**vars(path), "items_per_s": path.items_per_s, "warm_items_per_s": path.warm_items_per_s} for path in paths
        ],
        "rounds": rounds,
        "round_ratios": ratios(1),
        "round_ratios_persistent": ratios(2),
        "ratio": float(np.median(ratios(1))),
        "ratio_persistent": float(np.median(ratios(2))),
        "ratio_all_epochs": paths[0].items_per_s / max(1e-9, paths[1].items_per_s),
    }


def _rss_growth(shard: str, columns: list[str], decode: Any, rss_decodes: int) -> dict[str, Any]:
    """``{"rss_trace", "rss_growth_mb"}``: RSS over ``rss_decodes`` clip decodes of ``shard``'s rows in this process."""
    table = pq.read_table(shard, columns=columns)
    sample_rows = table.to_pylist()
    trace = rss_over_decodes(sample_rows, lambda row, count: decode.views(row, count), rss_decodes)
    after_warmup = next((rss for count, rss in trace if count >= 200), trace[0][1])
    return {"rss_trace": trace, "rss_growth_mb": trace[-1][1] - after_warmup}


def _combine(rounds: list[IngestResult]) -> IngestResult:
    """One path's rounds as one result: every epoch in order, each round's first marked cold."""
    starts, seconds = [], []
    for result in rounds:
        starts.append(len(seconds))
        seconds.extend(result.epoch_seconds)
    first = rounds[0]
    return IngestResult(
        first.name,
        sum(result.items for result in rounds),
        seconds,
        first.first_batch_s,
        max(result.peak_mb for result in rounds),
        first.baseline_mb,
        starts,
    )


def format_ingest(results: dict[str, Any], *, kind: str, where: str, rows: int, workers: int, batch: int) -> str:
    """The printed summary of :func:`run_benchmark`: each path's rate, epoch times and memory, and the ratios."""
    unit = "clips" if kind == "video" else "images"
    rounds = results.get("rounds", 1)
    epochs = len(results["paths"][0]["epoch_seconds"]) // rounds
    lines = [
        f"{kind} ingest of {where} ({rows} training rows, {workers} worker processes, batch {batch}, "
        f"{rounds} round(s) of {epochs} epochs per path, taking turns)"
    ]
    for path in results["paths"]:
        times = ", ".join(f"{seconds:.2f}" for seconds in path["epoch_seconds"])
        growth = path["peak_mb"] - path["baseline_mb"]
        lines.append(
            f"  {path['name']:<30} {format_rate(path['warm_items_per_s']):>7} {unit}/s warm "
            f"({format_rate(path['items_per_s'])} all epochs)"
            f" | epochs {times} s | first batch {path['first_batch_s']:.2f} s | peak PSS {path['peak_mb']:.0f} MiB"
            f" (+{growth:.0f} over idle)"
        )

    def spread(key: str) -> str:
        values = results.get(key, [])
        return f" (rounds: {', '.join(f'{value:.2f}' for value in values)})" if len(values) > 1 else ""

    lines.append(
        f"  ratio Ray Data / DataLoader: {results['ratio']:.2f}x warm epochs, median{spread('round_ratios')}; "
        f"{results['ratio_all_epochs']:.2f}x counting every epoch"
    )
    lines.append(
        f"  ratio Ray Data / DataLoader with persistent workers: {results['ratio_persistent']:.2f}x warm epochs, "
        f"median{spread('round_ratios_persistent')}"
    )
    return "\n".join(lines)


def _decode_share(args: tuple[Any, list[dict], int, int]) -> tuple[int, float, list[str]]:
    """One process's share of :func:`compare_backends`: ``(clips, CPU seconds of this process, clip digests)``."""
    import hashlib

    decode, rows, passes, first_pass = args
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the resize runs in one thread, as in a Ray Data task on one CPU
    start, clips, digests = time.process_time(), 0, []
    try:
        for execution in range(first_pass, first_pass + passes):
            for row in rows:
                try:
                    clip = decode.views(row, execution)[0]
                except Exception:  # noqa: BLE001 - a row this backend cannot decode: counted as missing, no crash
                    digests.append("")
                    continue
                clips += 1
                digests.append(hashlib.sha1(clip.tobytes()).hexdigest())
    finally:
        torch.set_num_threads(threads)
    return clips, time.process_time() - start, digests


class _InProcess:
    """``map`` in this process, for :func:`compare_backends` with one worker."""

    @staticmethod
    def map(function: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        return [function(item) for item in items]


def compare_backends(
    manifest: dict[str, Any],
    data_cfg: Any,
    *,
    img_size: int,
    backends: list[str],
    workers: int,
    passes: int = 1,
    rounds: int = 2,
) -> list[dict[str, Any]]:
    """Decode the training split's clips with each backend: the same rows, the same clips (seeded per row and pass),
    the same augmentation, in ``workers`` processes each holding a slice of the rows (after a warm-up of two rows).
    The backends take turns, ``rounds`` times (``passes`` over the rows each turn), so a machine's drift is spread
    over all of them.

    Returns:
        One dict per backend: ``backend``, ``clips``, ``seconds`` (wall), ``clips_per_s``, ``cpu_s_per_clip`` (the
        workers' CPU time, decoder threads included, per clip), ``failed`` (clips that did not decode),
        ``same_as_first`` (the share of clips identical to the first backend's, of those both decoded) and
        ``round_clips_per_s``.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from contextlib import nullcontext

    from fovea.data.clips import DecodeClips, clip_columns, usable
    from fovea.data.stream import clip_spec

    if workers < 1 or passes < 1 or rounds < 1:
        raise ValueError(f"workers, passes and rounds must be at least 1 (got {workers}, {passes}, {rounds})")
    for backend in backends:
        usable(backend)
    columns = clip_columns(manifest)
    shards = manifest["splits"]["train"]["shards"]
    rows = [row for shard in shards for row in pq.read_table(shard, columns=columns).to_pylist()]
    spec = clip_spec(data_cfg, img_size=img_size, num_frames=data_cfg.num_frames)
    shares = [rows[index::workers] for index in range(workers)]
    options = dict(storage=manifest.get("storage", "encoded"), decode_threads=data_cfg.decode_threads)
    decoders = {name: DecodeClips(spec, train=True, backend=name, **options) for name in backends}
    totals = {name: {"clips": 0, "seconds": 0.0, "cpu": 0.0, "digests": [], "rates": []} for name in backends}
    # fresh processes (no decoder state forked from this one); a process that dies fails the run, never hangs it;
    # one worker decodes in this process (its CPU time then includes this process's other threads, little here)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) if workers > 1 else nullcontext() as executor:
        pool: Any = executor or _InProcess()
        for name in backends:  # imports and each decoder's start-up, untimed
            list(pool.map(_decode_share, [(decoders[name], share[:2], 1, 0) for share in shares]))
        for turn in range(rounds):
            for name in backends:
                start = time.perf_counter()
                work = [(decoders[name], share, passes, 1 + turn * passes) for share in shares]
                done = list(pool.map(_decode_share, work))
                seconds = time.perf_counter() - start
                total, clips = totals[name], sum(count for count, _, _ in done)
                total["clips"] += clips
                total["seconds"] += seconds
                total["cpu"] += sum(cpu for _, cpu, _ in done)
                total["digests"] += [digest for _, _, share_digests in done for digest in share_digests]
                total["rates"].append(clips / max(1e-9, seconds))
    first = totals[backends[0]]["digests"] if backends else []
    results = []
    for name in backends:
        total = totals[name]
        both = [(a, b) for a, b in zip(first, total["digests"], strict=True) if a and b]
        results.append(
            {
                "backend": name,
                "clips": total["clips"],
                "seconds": total["seconds"],
                "clips_per_s": total["clips"] / max(1e-9, total["seconds"]),
                "cpu_s_per_clip": total["cpu"] / max(1, total["clips"]),
                "failed": sum(1 for digest in total["digests"] if not digest),
                "same_as_first": sum(a == b for a, b in both) / max(1, len(both)),
                "round_clips_per_s": total["rates"],
            }
        )
    return results


def format_backends(results: list[dict[str, Any]], *, where: str, rows: int, workers: int, spec_text: str) -> str:
    """The printed table of :func:`compare_backends`."""
    lines = [
        f"video decoders on {where} ({rows} training rows, {workers} processes, {spec_text})",
        f"  {'backend':<11} {'clips/s':>8} {'CPU s/clip':>11} {'clips':>6} {'failed':>6} "
        f"{'same clips as ' + results[0]['backend']:>22}",
    ]
    for result in results:
        lines.append(
            f"  {result['backend']:<11} {format_rate(result['clips_per_s']):>8} {result['cpu_s_per_clip']:11.4f} "
            f"{result['clips']:6d} {result['failed']:6d} {100 * result['same_as_first']:21.1f}%"
            f"  (rounds: {', '.join(format_rate(rate) for rate in result['round_clips_per_s'])} clips/s)"
        )
    return "\n".join(lines)
