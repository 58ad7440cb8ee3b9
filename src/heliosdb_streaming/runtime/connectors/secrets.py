"""Keeps credentials out of messages: every error and log line that names a connection uses these."""

from __future__ import annotations

import re

# scheme://user:password@host...  (the password is everything up to the last '@' of the authority)
_URL_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@]*:)(?P<password>[^/?#]*)@")
# key=value connection strings and query parameters: password=..., passwd=..., pwd=...
_KV_PASSWORD = re.compile(r"(?i)(?P<key>\b(?:password|passwd|pwd)\s*=\s*)(?P<value>'[^']*'|[^\s&;]*)")


def mask_connection_string(s: str) -> str:
    """Returns ``s`` with any password replaced by ``***``.

    Handles URLs (``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``) and
    ``password=...`` parameters (in a query string or a libpq key/value string).
    """
    masked = _URL_PASSWORD.sub(lambda m: m.group("head") + "***@", s, count=1)
    return _KV_PASSWORD.sub(lambda m: m.group("key") + "***", masked)


def mask_in_text(text: str, connection_string: str) -> str:
    """Masks the password of ``connection_string`` wherever it appears in ``text`` (a driver's message)."""
    text = text.replace(connection_string, mask_connection_string(connection_string))
    for password in _passwords(connection_string):
        if len(password) >= 3:  # masking one or two characters everywhere would garble the text
            text = text.replace(password, "***")
    return text


def _passwords(connection_string: str) -> list[str]:
    found = []
    m = _URL_PASSWORD.match(connection_string)
    if m:
        found.append(m.group("password"))
    for kv in _KV_PASSWORD.finditer(connection_string):
        found.append(kv.group("value").strip("'"))
    return found
