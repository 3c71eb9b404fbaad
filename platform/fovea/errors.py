"""How an error becomes the one line a user reads: the single implementation every module shares, and the error
classes every layer may raise (no dependencies, so ``fovea.track`` and ``fovea.data`` can raise them too)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem, already phrased for the user (dotted path first); a job exits 2 on it. Also
    ``fovea.config.ConfigError``."""


def first_line(err: BaseException, *, limit: int | None = None) -> str:
    """The first non-empty line of an error's message (MLflow's ``message`` attribute first), else its class name.

    Args:
        err: the exception.
        limit: cut the line to this many characters (None: keep it whole).
    """
    text = str(getattr(err, "message", "") or err).strip()
    line = text.splitlines()[0].strip() if text else type(err).__name__
    return line[:limit] if limit else line


def typed_line(err: BaseException, *, limit: int | None = None) -> str:
    """``"ValueError: first line"`` (just the class name for an error with no message): where the error's kind is
    part of the news, as in "the model cannot be built: TypeError: ...".

    Args:
        limit: cut the message's line to this many characters (None: keep it whole).
    """
    text = str(getattr(err, "message", "") or err).strip()
    return f"{type(err).__name__}: {first_line(err, limit=limit)}" if text else type(err).__name__


def joined_lines(err: BaseException) -> str:
    """An error's whole message folded onto one line (pyarrow's and Pillow's may take several)."""
    return " ".join(str(err).split()) or type(err).__name__
