"""A prepared split's shard files as they are at training time: checked before a run, read one file per task.

Shards can go missing or bad between preparation and training (a copy cut short, a disk error, a file deleted by
hand). Two places notice, and both answer to one budget, ``data.max_bad_shards`` per split:

- before the run, :func:`check_shards` opens every shard's Parquet footer (cheap: a few KiB per file): a missing or
  unreadable shard is dropped from the manifest, named in a warning and counted, rows included; past the budget the
  run stops with one line naming the files;
- while reading (damage the footer check cannot see, or a shard broken after it), each shard is read by its own
  Ray Data task (:func:`read_shards`), so a file that fails is one errored block: Ray Data's
  ``DataContext.max_errored_blocks`` skips it (logging the error, which names the file) within what is left of the
  budget and fails the pass past it, with :class:`ShardReadError`'s one line.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from fovea.data.manifest import is_uri, location_label
from fovea.errors import joined_lines

if TYPE_CHECKING:
    import ray.data

# the message as an exception's text shows it ("...ShardReadError: shard file ..."), not the raise statement quoted in a
# traceback, which holds the same words
_READ_PROBLEM = re.compile(r"ShardReadError: (shard file .* could not be read: .*)")


class ShardReadError(OSError):
    """A shard file failed while a task read it; the message names the file (one line)."""


class BadShardsError(ValueError):
    """More shard files of a split are missing or unreadable than ``data.max_bad_shards`` allows (one line)."""


def _budget_text(max_bad_shards: int) -> str:
    """A budget as the warning prints it."""
    return "no limit" if max_bad_shards < 0 else str(max_bad_shards)


def check_shards(manifest: dict[str, Any], *, max_bad_shards: int) -> dict[str, Any]:
    """The manifest with each split's missing or unreadable shard files dropped, and recorded.

    Every shard's Parquet footer is read (in parallel: against an object store each read is a round trip). A split
    that lost shards gets ``skipped_shards`` (``[{path, reason}]``) and ``skipped_rows`` (its manifest count minus
    the rows of the shards left), and its ``count`` becomes the rows it still has.

    Args:
        manifest: a manifest from ``fovea.data.load_manifest`` (absolute shard paths).
        max_bad_shards: shard files per split that may be dropped (-1 = any number).

    Raises:
        BadShardsError: a split lost more shards than allowed, or all of them (one line naming them).
    """
    checked = copy.deepcopy(manifest)
    for split, info in checked["splits"].items():
        shards = list(info.get("shards") or [])
        if not shards:
            continue
        paths, filesystem = paths_and_filesystem(shards)
        with ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
            results = list(pool.map(_footer_rows, paths, [filesystem] * len(paths)))
        bad = [
            {"path": location_label(shard), "reason": problem}
            for shard, (_, problem) in zip(shards, results, strict=True)
            if problem
        ]
        if not bad:
            continue
        named = ", ".join(f"{item['path']} ({item['reason']})" for item in bad)
        if len(bad) == len(shards) or 0 <= max_bad_shards < len(bad):
            limit = "none is left to train on" if len(bad) == len(shards) else f"data.max_bad_shards={max_bad_shards}"
            raise BadShardsError(
                f"{split} split: {len(bad)} of {len(shards)} shard files are missing or unreadable ({limit}): {named}"
            )
        rows = sum(count for count, problem in results if not problem)
        info["shards"] = [path for path, (_, problem) in zip(shards, results, strict=True) if not problem]
        info["skipped_shards"] = bad
        info["skipped_rows"] = max(0, int(info.get("count", rows)) - rows)
        info["count"] = rows
    return checked


def _footer_rows(path: str, filesystem: Any) -> tuple[int, str]:
    """``(rows, "")`` for a shard whose footer reads, ``(0, reason)`` for one that is missing or unreadable."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path, filesystem=filesystem).metadata.num_rows, ""
    except FileNotFoundError:
        return 0, "no such file"
    except (OSError, pa.ArrowException) as err:
        return 0, joined_lines(err)


def skipped_summary(manifest: dict[str, Any]) -> tuple[int, int]:
    """``(shard files, rows)`` that :func:`check_shards` dropped, over all splits."""
    splits = manifest["splits"].values()
    return sum(len(info.get("skipped_shards", ())) for info in splits), sum(
        int(info.get("skipped_rows", 0)) for info in splits
    )


def skipped_warnings(manifest: dict[str, Any], max_bad_shards: int) -> list[str]:
    """One warning line per split that lost shards (for the job's output)."""
    lines = []
    for split, info in manifest["splits"].items():
        bad = info.get("skipped_shards")
        if bad:
            named = ", ".join(f"{item['path']} ({item['reason']})" for item in bad)
            lines.append(
                f"warning: {split} split: skipping {len(bad)} missing or unreadable shard file(s), "
                f"{info['skipped_rows']} of {info['count'] + info['skipped_rows']} rows "
                f"(data.max_bad_shards={_budget_text(max_bad_shards)}): {named}"
            )
    return lines


def errored_block_budget(info: dict[str, Any], max_bad_shards: int) -> int:
    """What is left of a split's budget for shards that fail while read (Ray Data's ``max_errored_blocks``)."""
    if max_bad_shards < 0:
        return -1
    return max(0, max_bad_shards - len(info.get("skipped_shards", ())))


def read_shards(
    paths: list[str],
    columns: list[str],
    *,
    filesystem: Any = None,
    shuffle_seed: int | None = None,
    max_errored_blocks: int = 0,
) -> ray.data.Dataset:
    """The rows of ``paths`` (shard files), one read task per file.

    Args:
        paths: the shard files (paths inside ``filesystem`` when one is given).
        columns: the columns to read.
        filesystem: a pyarrow filesystem (None: local paths).
        shuffle_seed: when given, each execution reads the files in a new order drawn from it.
        max_errored_blocks: files that may fail to read in one execution (-1 = any): each is skipped, Ray Data
            logging its :class:`ShardReadError` (which names it); one more fails the execution. Set on the dataset's
            own context, which the datasets made from it keep and Ray Train ships to the process executing them.
    """
    import ray.data
    from ray.data import FileShuffleConfig

    shuffle = FileShuffleConfig(seed=shuffle_seed, reseed_after_execution=True) if shuffle_seed is not None else None
    source = _shard_files_class()(paths, columns=columns, filesystem=filesystem, shuffle=shuffle)
    dataset = ray.data.read_datasource(source, override_num_blocks=len(paths))
    dataset.context.max_errored_blocks = max_errored_blocks
    return dataset


@functools.cache
def _shard_files_class() -> type:
    from ray.data.datasource import FileBasedDatasource

    class ShardFiles(FileBasedDatasource):
        """Parquet shard files read whole, one per read task (Ray Data's own Parquet readers may pack several files
        into one task: one bad file would cost the rows of the others)."""

        def __init__(self, paths: list[str], *, columns: list[str], **options: Any) -> None:
            super().__init__(paths, **options)
            self.columns = columns

        def get_name(self) -> str:
            return "Shards"

        def _open_input_source(self, filesystem: Any, path: str, **open_args: Any) -> Any:
            try:
                return filesystem.open_input_file(path)  # Parquet reads its footer first: random access
            except FileNotFoundError:
                raise ShardReadError(f"shard file {path} could not be read: no such file") from None
            except OSError as err:
                raise ShardReadError(f"shard file {path} could not be read: {joined_lines(err)}") from None

        def _read_stream(self, f: Any, path: str) -> Iterator[Any]:
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                shard = pq.ParquetFile(f)
                for group in range(shard.num_row_groups):
                    yield shard.read_row_group(group, columns=self.columns)
            except (OSError, pa.ArrowException) as err:
                raise ShardReadError(f"shard file {path} could not be read: {joined_lines(err)}") from None

    return ShardFiles


def shard_read_problem(err: BaseException) -> str | None:
    """The one-line :class:`ShardReadError` behind ``err`` (however Ray wrapped it: its task errors subclass the
    original's class, a worker's failure may carry it as text), or None."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [err]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        original = getattr(current, "cause", None) or getattr(current, "_base_exc", None) or current
        if isinstance(original, ShardReadError) and original.args:
            return str(original.args[0]).strip().splitlines()[0]  # Ray Data appends its retry notes as more lines
        found = _READ_PROBLEM.search(str(current))
        if found:
            return found.group(1).strip()
        pending += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return None


def paths_and_filesystem(shards: list[str]) -> tuple[list[str], Any]:
    """Local shard paths as they are (filesystem None); URIs (``s3://bucket/ds/x.parquet?endpoint_override=...``) as
    paths inside one pyarrow filesystem built from the first, options included (Ray Data would drop them)."""
    if not shards or not is_uri(shards[0]):
        return shards, None
    from pyarrow import fs

    # one filesystem (building one may ask the store for its region); the shards share its scheme and authority
    filesystem, first = fs.FileSystem.from_uri(shards[0])
    prefix = len(shards[0].partition("?")[0]) - len(first)  # "s3://" for s3://bucket/key -> bucket/key
    return [shard.partition("?")[0][prefix:] for shard in shards], filesystem
