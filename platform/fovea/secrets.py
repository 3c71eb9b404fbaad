"""Secrets: which names hold one, how they are hidden on the way out, and URIs that carry credentials.

A name holds a secret when one of its words is, or ends with, ``token``, ``password`` (``passwd``), ``secret`` or
``key`` (plurals too): ``model.kwargs.api_token``, ``AWS_SECRET_ACCESS_KEY``, ``apiKey``, ``hf_token``. Words are
split at ``.``, ``_``, ``-``, ``:`` and lower-to-upper case changes, so ``keep_checkpoints`` or ``kwargs`` never
match. Only *strings* under such a name are hidden: ML vocabulary reuses these words for model settings that are no
secret (``class_token=False``, ``reg_tokens=4``, ``key_dim=16``), and numbers and booleans stay as they are so a model
can still be rebuilt from its record.

The in-memory config keeps the real values; ``redact`` is applied where values leave fovea: MLflow params, tags and
artifacts, checkpoints, sweep files, printed errors; it also hides the credentials of a URI in any string
(``redact_uris``). Credentials for MLflow and object stores come from the environment only: ``uri_credentials``
finds URIs that embed them (a password with unencoded ``/``, ``#`` or ``@`` too), which the config refuses.

No Ray, MLflow or torch here: the config imports this module.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_plus

MARKER = "***"
SECRET_WORDS = ("token", "password", "passwd", "secret", "key")
# query parameters of presigned or SAS URLs that act as credentials besides the SECRET_WORDS
_QUERY_CREDENTIAL_WORDS = ("credential", "signature", "sig")
# URI schemes whose user part is itself a credential (pyarrow: s3://KEY:SECRET@bucket, gs://ACCESS_TOKEN@bucket)
_USER_IS_CREDENTIAL = ("http", "https", "s3", "s3a", "gs", "gcs")
_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s,()\[\]{}'\"]+")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_TO_SPACE = re.compile(r"\S+")


def _words(name: str) -> list[str]:
    return [word.lower() for word in _WORDS.findall(name)]


def _has_word(name: str, stems: tuple[str, ...]) -> bool:
    for word in _words(name):
        singular = word[:-1] if word.endswith("s") else word
        if word in stems or any(singular.endswith(stem) for stem in stems):
            return True
    return False


def is_secret_name(name: str) -> bool:
    """Whether a config path (``model.kwargs.api_token``), dict key or environment variable name holds a secret."""
    return _has_word(name, SECRET_WORDS)


def redact(tree: Any, secret: bool = False) -> Any:
    """A copy of ``tree`` (dicts, lists, scalars) with every string under a secret name replaced by ``MARKER``, and
    the credentials of any URI in any other string too (``redact_uris``).

    Keys may be dotted paths (``{"model.kwargs": {...}}``, ``{"tune.model.kwargs.api_key": ...}``): any part of a key
    can make it secret.

    Args:
        tree: the value to copy.
        secret: whether ``tree`` itself sits under a secret name.
    """
    if isinstance(tree, dict):
        return {key: redact(value, secret or is_secret_name(str(key))) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(redact(value, secret) for value in tree)
    if secret and isinstance(tree, str) and tree:
        return MARKER
    if isinstance(tree, str):
        return redact_uris(tree)
    return tree


def _where_to_put(scheme: str) -> str:
    """Where the credentials of a ``scheme`` URI go instead (environment variables, or the store's own files)."""
    if scheme in ("http", "https"):
        return "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) for a tracking server"
    if scheme in ("s3", "s3a"):
        return "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), or use an instance profile"
    if scheme in ("gs", "gcs"):
        return "GOOGLE_APPLICATION_CREDENTIALS, or use workload identity"
    if scheme.startswith("postgres"):
        return "PGPASSWORD (or ~/.pgpass)"
    return "the environment variables or credential files of that service"


def _user_info(uri: str) -> tuple[str, str, str] | None:
    """``(scheme, user part, what follows the @ that ends it)`` of a URI whose authority holds a user part, else None.

    Read by hand, not with ``urlsplit``, so that a password with an unencoded ``/``, ``?``, ``#`` or ``@`` still
    counts as one: ``urlsplit("http://user:sek/ret@host/")`` finds host ``user``, port ``sek`` and the path
    ``/ret@host/``. An authority whose port is not a number (``user:sek``, ``user:``), or that ends at a ``#``, with
    an ``@`` after it holds a user part. Whether that part is a credential is read from the authority as
    ``urlsplit`` would see it; what is hidden reaches to the last ``@`` before the first ``?`` or ``#`` that follows
    an ``@``: when in doubt, more is hidden, never less.
    """
    match = _SCHEME.match(uri)
    if not match:
        return None
    scheme, body = match.group(1), uri[match.end() :]
    end = next((i for i, char in enumerate(body) if char in "/?#"), len(body))
    authority, first_at = body[:end], body.find("@")
    if first_at < 0:
        return None
    cut = next((i for i in range(first_at, len(body)) if body[i] in "?#"), len(body))
    widest = body.rindex("@", 0, cut)
    if "@" in authority:
        return scheme, authority.rpartition("@")[0], body[widest + 1 :]
    port = authority.rpartition("]")[2].rpartition(":")
    if (port[1] and not port[2].isdigit()) or body[end : end + 1] == "#":  # user:/pass@ too: an empty port
        return scheme, body[:widest], body[widest + 1 :]
    return None


def _hide_parameters(text: str) -> tuple[str, bool]:
    """A query string (or fragment) with the values of parameters named like credentials replaced by ``MARKER``,
    and whether any was."""
    pieces, hidden = [], False
    for piece in text.split("&"):
        name, eq, _ = piece.partition("=")
        plain = unquote_plus(name)
        if eq and (is_secret_name(plain) or _has_word(plain, _QUERY_CREDENTIAL_WORDS)):
            piece, hidden = f"{name}={MARKER}", True
        pieces.append(piece)
    return "&".join(pieces), hidden


def _hidden_uri(uri: str) -> str | None:
    """``uri`` with its credentials replaced by ``MARKER`` (see ``uri_credentials``), or None when it has none."""
    match = _SCHEME.match(uri)
    if not match:
        return None
    scheme, rest = match.group(1), uri[match.end() :]
    found = _user_info(uri)
    user_is_credential = found is not None and (":" in found[1] or scheme.lower() in _USER_IS_CREDENTIAL)
    if user_is_credential:
        rest = f"{MARKER}@{found[2]}"
    before, mark, after = rest.partition("#")
    path, question, query = before.partition("?")
    query, in_query = _hide_parameters(query)
    after, in_fragment = _hide_parameters(after)
    if not (user_is_credential or in_query or in_fragment):
        return None
    return f"{scheme}://{path}{question}{query}{mark}{after}"


def uri_credentials(uri: str) -> str | None:
    """Why ``uri`` may not be given as it is (it embeds credentials), in words that do not repeat them; else None.

    Credentials are a user part with a password (``http://user:pass@host``, the password holding any character,
    ``/``, ``#`` and ``@`` unencoded too), any user part where it is the credential (``https://TOKEN@host``,
    ``s3://KEY:SECRET@bucket``, ``gs://TOKEN@bucket``), or a query parameter named like a secret
    (``?access_key=...&secret_key=...``, presigned ``X-Amz-Signature``).
    """
    shown = _hidden_uri(uri)
    if shown is None:
        return None
    scheme = uri.partition("://")[0].lower()
    return (
        f"{shown} carries credentials; fovea takes them from the environment only: set {_where_to_put(scheme)}, "
        "and give the URI without them"
    )


def _uris_in(text: str) -> list[tuple[int, str, str]]:
    """Each URI in ``text`` that carries credentials: ``(start, the URI as found, it with them hidden)``.

    A URI inside other text (``choice(s3://a, s3://b)``) ends at a comma, bracket or quote; one whose password holds
    such a character is found by also reading it up to the next white space.
    """
    found, covered = [], 0
    for start in (match.start() for match in _SCHEME.finditer(text)):
        if start < covered:
            continue
        short, whole = _URI.match(text, start), _TO_SPACE.match(text, start)
        for candidate in dict.fromkeys(match.group(0) for match in (short, whole) if match):
            hidden = _hidden_uri(candidate)
            if hidden is not None:
                found.append((start, candidate, hidden))
                covered = start + len(candidate)
                break
    return found


def redact_uris(text: str) -> str:
    """``text`` with the credentials of every URI in it replaced by ``MARKER`` (user parts that hold them, query
    parameters named like secrets); text without such URIs comes back unchanged."""
    if "://" not in text:
        return text
    pieces, last = [], 0
    for start, uri, hidden in _uris_in(text):
        pieces += [text[last:start], hidden]
        last = start + len(uri)
    return "".join(pieces) + text[last:]


def find_uri_credentials(tree: Any, path: str = "") -> tuple[str, str] | None:
    """The first ``(dotted path, reason)`` of a string in ``tree`` holding a URI with credentials, else None."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            found = find_uri_credentials(value, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(tree, list | tuple):
        for value in tree:
            found = find_uri_credentials(value, path)
            if found:
                return found
    elif isinstance(tree, str) and "://" in tree:
        for _, uri, _ in _uris_in(tree):
            reason = uri_credentials(uri)
            if reason:
                return path, reason
    return None
