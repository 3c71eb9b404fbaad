"""Secrets: which names hold one, how they are hidden on the way out, and URIs that carry credentials.

A name holds a secret when one of its words is, or ends with, ``token``, ``password`` (``passwd``), ``secret`` or
``key`` (plurals too): ``model.kwargs.api_token``, ``AWS_SECRET_ACCESS_KEY``, ``apiKey``, ``hf_token``. Words are
split at ``.``, ``_``, ``-``, ``:`` and lower-to-upper case changes, so ``keep_checkpoints`` or ``kwargs`` never
match. Only *strings* under such a name are hidden: ML vocabulary reuses these words for model settings that are no
secret (``class_token=False``, ``reg_tokens=4``, ``key_dim=16``), and numbers and booleans stay as they are so a model
can still be rebuilt from its record.

The in-memory config keeps the real values; ``redact`` is applied where values leave fovea: MLflow params, tags and
artifacts, checkpoints, sweep files, printed errors. Credentials for MLflow and object stores come from the
environment only: ``uri_credentials`` finds URIs that embed them, which the config refuses.

No Ray, MLflow or torch here: the config imports this module.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

MARKER = "***"
SECRET_WORDS = ("token", "password", "passwd", "secret", "key")
# query parameters of presigned or SAS URLs that act as credentials besides the SECRET_WORDS
_QUERY_CREDENTIAL_WORDS = ("credential", "signature", "sig")
# URI schemes whose user part is itself a credential (pyarrow: s3://KEY:SECRET@bucket, gs://ACCESS_TOKEN@bucket)
_USER_IS_CREDENTIAL = ("http", "https", "s3", "s3a", "gs", "gcs")
_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s,()\[\]{}'\"]+")


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
    """A copy of ``tree`` (dicts, lists, scalars) with every string under a secret name replaced by ``MARKER``.

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


def uri_credentials(uri: str) -> str | None:
    """Why ``uri`` may not be given as it is (it embeds credentials), in words that do not repeat them; else None.

    Credentials are a user part with a password (``http://user:pass@host``), any user part where it is the credential
    (``https://TOKEN@host``, ``s3://KEY:SECRET@bucket``, ``gs://TOKEN@bucket``), or a query parameter named like a
    secret (``?access_key=...&secret_key=...``, presigned ``X-Amz-Signature``).
    """
    try:
        parts = urlsplit(uri)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    user, at, host = parts.netloc.rpartition("@")
    user_is_credential = bool(at) and (":" in user or scheme in _USER_IS_CREDENTIAL)
    hidden = [name for name, _ in query if is_secret_name(name) or _has_word(name, _QUERY_CREDENTIAL_WORDS)]
    if not user_is_credential and not hidden:
        return None
    netloc = f"{MARKER}@{host}" if user_is_credential else parts.netloc
    shown_query = "&".join(f"{name}={MARKER if name in hidden else value}" for name, value in query)
    shown = f"{parts.scheme}://{netloc}{parts.path}" + (f"?{shown_query}" if shown_query else "")
    return (
        f"{shown} carries credentials; fovea takes them from the environment only: set {_where_to_put(scheme)}, "
        "and give the URI without them"
    )


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
        for match in _URI.finditer(tree):
            reason = uri_credentials(match.group(0))
            if reason:
                return path, reason
    return None
