"""The one masking function: every form a password takes in a URL, a DSN or a message is hidden."""

from __future__ import annotations

import logging
import string
from pathlib import Path
from urllib.parse import quote, quote_plus

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from heliosdb_streaming.embedded import logs
from heliosdb_streaming.kubernetes.restapi.podlogs import parse_pod_log
from heliosdb_streaming.runtime.connectors import secrets
from heliosdb_streaming.runtime.connectors.secrets import mask_connection_string, mask_in_text, mask_secrets
from heliosdb_streaming.runtime.logformat import JsonLineFormatter, MaskingFormatter

# A password may hold anything printable but whitespace in a URL (libpq and asyncpg read up to the
# last '@'), at least 3 characters so that "not in the output" is a meaningful check.
PASSWORDS = st.text(
    alphabet=string.ascii_letters + string.digits + "/@:?#%!$&'()*+,;=[]~-._\"\\^`{|}<>",
    min_size=3,
    max_size=24,
)
USERS = st.text(alphabet=string.ascii_letters + string.digits + "_.-", min_size=0, max_size=10)
SCHEMES = st.sampled_from(["postgresql", "postgres", "s3", "redis", "mysql+asyncmy", "http"])
HOSTS = st.sampled_from(["db", "127.0.0.1:5432", "[::1]:5432", "pg.example.com"])
TAILS = st.sampled_from(["", "/db", "/db?sslmode=require", "/db?application_name=x#frag"])
PROSE = st.sampled_from(["connecting to {} failed", "{}", "'{}'", "dsn={} refused", "(at {})"])


@settings(max_examples=300)
@given(SCHEMES, USERS, PASSWORDS, HOSTS, TAILS, PROSE)
def test_a_url_password_is_masked_whatever_it_holds(
    scheme: str, user: str, password: str, host: str, tail: str, prose: str
) -> None:
    url = f"{scheme}://{user}:{password}@{host}{tail}"
    masked = mask_secrets(prose.format(url))
    assert masked == prose.format(f"{scheme}://{user}:***@{host}{tail}")


@settings(max_examples=200)
@given(USERS, PASSWORDS, HOSTS)
def test_a_percent_encoded_password_is_masked_encoded_and_decoded(
    user: str, password: str, host: str
) -> None:
    url = f"postgresql://{user}:{quote(password, safe='')}@{host}/db"
    assert mask_secrets(url) == f"postgresql://{user}:***@{host}/db"
    assert mask_connection_string(url) == f"postgresql://{user}:***@{host}/db"
    # a driver that quotes the decoded password in its own words
    message = f"password authentication failed (password {password!s} rejected)"
    masked = mask_in_text(message, url)
    # "not in" means something only for a password that is not part of the mask's own text ("=**")
    assume(password not in "password authentication failed (password =*** rejected)")
    assert password not in masked and "***" in masked


@settings(max_examples=200)
@given(PASSWORDS.filter(lambda p: p.strip()), st.sampled_from(["password", "sslpassword", "PASSWORD", "pwd"]))
def test_libpq_key_value_passwords_are_masked(password: str, key: str) -> None:
    quoted = "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"
    for form in (quoted, f"{key} = {quoted}"):
        dsn = f"host=db {key}={quoted} user=u" if form == quoted else f"host=db {form} user=u"
        # the exact form, not "password not in masked": a password such as "d=*" is part of the mask
        want = f"host=db {key}=*** user=u" if form == quoted else f"host=db {key} = *** user=u"
        assert mask_secrets(dsn) == want


@settings(max_examples=200)
@given(PASSWORDS, st.sampled_from(["password", "secret_key", "aws_secret_access_key", "X-Amz-Signature"]))
def test_query_string_secrets_are_masked(password: str, key: str) -> None:
    url = f"postgresql://db/x?user=u&{key}={quote_plus(password)}&sslmode=require"
    assert mask_secrets(url) == f"postgresql://db/x?user=u&{key}=***&sslmode=require"


@settings(max_examples=200)
@given(st.text(alphabet=string.ascii_letters + string.digits + " .,!-()[]/", max_size=80))
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert mask_secrets(text) == text


@settings(max_examples=200)
@given(SCHEMES, USERS, PASSWORDS, HOSTS, TAILS)
def test_masking_is_idempotent(scheme: str, user: str, password: str, host: str, tail: str) -> None:
    text = f"at {scheme}://{user}:{password}@{host}{tail} with password={quote_plus(password)}"
    once = mask_secrets(text)
    assert mask_secrets(once) == once
    assert once == f"at {scheme}://{user}:***@{host}{tail} with password=***"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://u:pa/ss@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgres://u:p@ss:w/rd@h/db?sslmode=require", "postgres://u:***@h/db?sslmode=require"),
        ("postgresql://:secret@h/db", "postgresql://:***@h/db"),
        ("s3://AKIAEXAMPLE:wJalr/XUtnFEMI@bucket/prefix", "s3://AKIAEXAMPLE:***@bucket/prefix"),
        ('{"password": "hunter2", "n": 1}', '{"password": "***", "n": 1}'),
        ("{'secret_key': 'abc/def'}", "{'secret_key': '***'}"),
        ("Authorization: Bearer abcdefgh12345678", "Authorization: Bearer ***"),
        ("host=h password='a b\\' c' user=u", "host=h password=*** user=u"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("sqlite:///tmp/x.db", "sqlite:///tmp/x.db"),
        ("see http://host:8080/path for more", "see http://host:8080/path for more"),
    ],
)
def test_known_forms(text: str, masked: str) -> None:
    assert mask_secrets(text) == masked


def test_a_malformed_url_password_with_a_space_is_masked_when_the_string_is_known() -> None:
    dsn = "postgresql://u:pa ss word@h/db"
    assert mask_connection_string(dsn) == "postgresql://u:***@h/db"
    assert "pa ss word" not in mask_in_text(f"cannot connect to {dsn}: bad pa ss word", dsn)


def test_one_masking_function_everywhere() -> None:
    """The job log, worker log lines (local and in pods) and pod log readers use the same function."""
    assert logs.mask_secrets is secrets.mask_secrets
    url = "postgresql://bob:pa/ss@db/x"
    record = logging.LogRecord("w", logging.ERROR, __file__, 1, "cannot write to %s", (url,), None)
    json_line = JsonLineFormatter(0).format(record)
    plain = MaskingFormatter("%(message)s").format(record)
    assert "pa/ss" not in json_line and "pa/ss" not in plain
    assert orjson.loads(json_line)["message"] == "cannot write to postgresql://bob:***@db/x"
    raw = f"Traceback (most recent call last):\nConnectionError: {url}\n"
    assert all("pa/ss" not in e.message for e in parse_pod_log(raw))


def test_no_second_masking_function() -> None:
    """Two maskings disagreed (issue 15): only ``secrets`` may write the mask; everything else calls it."""
    src = Path(secrets.__file__).parents[2]
    writers = [
        str(path.relative_to(src))
        for path in src.rglob("*.py")
        if '"***"' in path.read_text() or "'***'" in path.read_text()
    ]
    assert writers == ["runtime/connectors/secrets.py"], writers
