"""Keeps credentials out of every text a user or a log reader sees: one masking function for all of it.

:func:`mask_secrets` is the function: job messages and details, job logs, API errors, worker log lines
(local and in pods) and Kubernetes Events all pass through it. It hides

- the password of a URL's user info, whatever it contains (``/``, ``@``, ``:``, ``?``, ``#``,
  percent-encoded bytes): ``postgresql://u:pa/ss@host/db`` -> ``postgresql://u:***@host/db``. The
  password runs to the *last* ``@`` of the URL (as libpq reads it), so a query holding an ``@`` may
  be masked too: too much is hidden, never too little;
- ``key=value`` secrets of libpq strings and query strings (``password=...``, ``sslpassword``,
  ``passwd``, ``pwd``, ``secret``/``secret_key``/``aws_secret_access_key``, ``token``s, ``api_key``,
  ``X-Amz-Signature``; quoted values with escapes included), and the same keys as quoted JSON or
  Python mapping entries (``"password": "..."``);
- ``Bearer``/``Basic`` credentials of an Authorization header;
- and, given the connection strings in play (``known``), their passwords wherever they appear
  literally, raw or percent-decoded (drivers quote them in their own words).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"

# scheme://[user]:password@  -- the password is greedy up to the last '@' before whitespace
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@'\"]*:)(?P<password>\S*)@")
# the same for a whole connection string, which may hold whitespace in a (malformed) password
_URL_PASSWORD_WHOLE = re.compile(
    r"^(?P<head>\s*[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*:)(?P<password>.*)@", re.S
)
_SECRET_WORDS = r"(?:password|passwd|pwd|secret|token|api_?key|signature|credentials?)"
_KEY = rf"[A-Za-z0-9_.-]*{_SECRET_WORDS}[A-Za-z0-9_-]*"
_QUOTED = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""
# password=..., sslpassword = '...', ?password=...&, aws_secret_access_key=...
_KV = re.compile(rf"(?i)(?P<key>(?<![A-Za-z0-9_]){_KEY}\s*=\s*)(?P<value>{_QUOTED}|[^\s&]*)")
# "password": "...", 'secret_key': '...'
_MAPPING = re.compile(rf"(?i)(?P<key>([\"']){_KEY}\2\s*:\s*)(?P<value>{_QUOTED})")
_AUTHORIZATION = re.compile(r"(?i)(?P<key>\b(?:bearer|basic)\s+)(?P<value>[A-Za-z0-9._~+/=-]{8,})")


def mask_secrets(text: str, *known: str) -> str:
    """``text`` with every password and secret replaced by ``***`` (see the module docstring).

    ``known``: connection strings whose passwords are to be hidden wherever they occur in ``text``.
    """
    for connection_string in known:
        if connection_string and connection_string in text:
            text = text.replace(connection_string, _mask_whole(connection_string))
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", text)
    text = _KV.sub(_mask_value, text)
    text = _MAPPING.sub(lambda m: f"{m.group('key')}{m.group('value')[0]}{MASK}{m.group('value')[0]}", text)
    text = _AUTHORIZATION.sub(lambda m: f"{m.group('key')}{MASK}", text)
    for connection_string in known:
        for password in _passwords(connection_string):
            for form in {password, unquote(password)}:
                if len(form) >= 3:  # masking one or two characters everywhere would garble the text
                    text = text.replace(form, MASK)
    return text


def mask_connection_string(connection_string: str) -> str:
    """A connection string as it may be shown: ``postgresql://u:***@host/db``, ``password=*** host=h``."""
    return mask_secrets(_mask_whole(connection_string))


def mask_in_text(text: str, connection_string: str) -> str:
    """Masks ``text`` (a driver's message) and the password of ``connection_string`` wherever it is."""
    return mask_secrets(text, connection_string)


def _mask_whole(connection_string: str) -> str:
    masked = _URL_PASSWORD_WHOLE.sub(lambda m: f"{m.group('head')}{MASK}@", connection_string, count=1)
    return _KV.sub(_mask_value, masked)


def _mask_value(m: re.Match[str]) -> str:
    return f"{m.group('key')}{MASK}"


def _passwords(connection_string: str) -> list[str]:
    found = []
    m = _URL_PASSWORD_WHOLE.match(connection_string)
    if m:
        found.append(m.group("password"))
    for kv in _KV.finditer(connection_string):
        value = kv.group("value")
        found.append(value[1:-1] if value[:1] in ("'", '"') and len(value) >= 2 else value)
    return [p for p in found if p]
