"""The ``fovea`` command: the model registry, runs and prepared datasets, from a terminal.

    fovea models list | show NAME | versions NAME | promote NAME VERSION [--alias A] | download REF DIR
    fovea runs list [--experiment X] [--limit N] [--filter F] | compare RUN RUN [--all] | sync FILE...
    fovea datasets list [--root DIR] | show PATH

Global options (before or after the command): ``--tracking-uri URI`` and ``--json``. Every MLflow query lives in
``fovea.track.browse``; this package parses the command line and renders tables: ``main`` (the command line and
its dispatch), ``format`` (tables, pairs, JSON and the helpers every command shares), ``models``, ``runs`` and
``datasets`` (one module per command group).
"""

from fovea.cli.format import Column, CommandError, render_table
from fovea.cli.main import build_parser, main

__all__ = ["Column", "CommandError", "build_parser", "main", "render_table"]
