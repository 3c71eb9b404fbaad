"""The ``fovea`` command line: the argument parser, the dispatch to each command's handler and ``main`` (exit
codes, one-line errors, quiet libraries)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from fovea.cli.datasets import datasets_list, datasets_show
from fovea.cli.format import CommandError
from fovea.cli.models import models_download, models_list, models_promote, models_show, models_versions
from fovea.cli.predict import add_predict_command
from fovea.cli.runs import runs_compare, runs_list, runs_sync
from fovea.cli.weights import add_weights_commands
from fovea.errors import typed_line


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit code 2), as all of fovea's bad-input errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``fovea`` command line."""
    # The global options live on every parser with SUPPRESS defaults, so they work before or after the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--tracking-uri",
        default=argparse.SUPPRESS,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this folder)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="JSON on stdout instead of tables"
    )
    parser = _Parser(
        prog="fovea",
        description="Browse fovea's MLflow model registry, runs and prepared datasets; inspect and import weights.",
        parents=[common],
    )
    groups = parser.add_subparsers(metavar="{models,runs,datasets,weights,predict}")

    def command(
        subparsers: Any, name: str, handler: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        sub = subparsers.add_parser(name, help=help_text, description=help_text, parents=[common])
        sub.set_defaults(handler=handler)
        return sub

    def group(name: str, help_text: str) -> Any:
        group_parser = groups.add_parser(name, help=help_text, description=help_text, parents=[common])
        group_parser.set_defaults(usage_parser=group_parser)  # `fovea models` alone prints the models help
        return group_parser.add_subparsers(metavar="COMMAND")

    parser.set_defaults(usage_parser=parser)
    models = group("models", "the model registry")
    command(models, "list", models_list, "every registered model: versions, aliases, the champion's val_top1")
    show = command(models, "show", models_show, "a registered model and its champion's (else latest) version")
    show.add_argument("name", help="NAME, or NAME@ALIAS / NAME/VERSION to show that version")
    versions = command(models, "versions", models_versions, "every version of a registered model")
    versions.add_argument("name")
    promote = command(models, "promote", models_promote, "point an alias (default: champion) at a version")
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument("--alias", default="champion", help="the alias to move (default: champion)")
    download = command(
        models, "download", models_download, "write a version's MLflow model and a pickle-free weights copy to DIR"
    )
    download.add_argument("reference", metavar="REF", help="NAME@ALIAS, NAME/VERSION or models:/...")
    download.add_argument("directory", metavar="DIR")
    download.add_argument("--force", action="store_true", help="replace a model downloaded to DIR before")

    runs = group("runs", "MLflow runs")
    listing = command(runs, "list", runs_list, "the newest runs of an experiment")
    listing.add_argument("--experiment", default="fovea", help="experiment name, or 'all' (default: fovea)")
    listing.add_argument("--limit", type=int, default=50, help="the most runs shown (default: 50)")
    listing.add_argument("--filter", default="", help='MLflow filter, e.g. "metrics.val_top1 > 90"')
    compare = command(runs, "compare", runs_compare, "two runs side by side: params, final metrics, key tags")
    compare.add_argument("runs", nargs=2, metavar="RUN", help="run id, unique id prefix (6+ characters) or run name")
    compare.add_argument("--all", action="store_true", help="every param, not only those that differ")
    compare.add_argument("--experiment", default="all", help="where to look for the runs (default: all)")
    sync = command(runs, "sync", runs_sync, "send tracking fallback files (written during an outage) to their runs")
    sync.add_argument("files", nargs="+", metavar="FILE")

    datasets = group("datasets", "prepared datasets")
    dataset_list = command(datasets, "list", datasets_list, "prepared datasets under $FOVEA_HOME/datasets")
    dataset_list.add_argument("--root", default="", help="search this folder instead")
    dataset_show = command(datasets, "show", datasets_show, "a prepared dataset's manifest, in a few lines")
    dataset_show.add_argument("path", help="the dataset folder or its manifest.json")
    add_weights_commands(group("weights", "weights files: inspect, import into the registry"), command)
    add_predict_command(groups, command)
    return parser


@contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Hold back MLflow's and alembic's INFO lines, progress bars and library warnings (noise between a command's
    output lines) while a command runs; the caller's settings come back afterwards (``main`` called from Python)."""
    settings = {"MLFLOW_LOGGING_LEVEL": "ERROR", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    saved_environment = {key: os.environ.get(key) for key in settings}
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    saved_levels = [logger.level for logger in loggers]
    for key, value in settings.items():
        os.environ.setdefault(key, value)  # MLflow reads its loggers' level from this when it is first imported
    for logger in loggers:  # and these when it already was
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for key, value in saved_environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for logger, level in zip(loggers, saved_levels, strict=True):
            logger.setLevel(level)


def _fail(message: str, code: int = 2) -> int:
    print(f"fovea: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the ``fovea`` command.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 for bad input or something not found, 1 for anything unexpected.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, or a usage error already printed
        return int(exit_request.code or 0)
    if not hasattr(args, "handler"):  # a group without its command, or nothing at all
        args.usage_parser.print_help(sys.stderr)
        return 2
    args.json = getattr(args, "json", False)
    try:
        with _quiet_libraries():
            return args.handler(args)
    except (CommandError, ValueError, FileNotFoundError) as err:
        return _fail(" ".join(str(err).split()) or type(err).__name__)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `fovea runs list | head` stopped reading: leave quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as err:  # never a traceback: one line that says what broke
        return _fail(typed_line(err), code=1)


if __name__ == "__main__":
    sys.exit(main())
