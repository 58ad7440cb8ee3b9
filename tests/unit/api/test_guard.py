"""api/guard.py: the Host, Origin and Content-Type decisions of the browser threat model."""

from __future__ import annotations

import pytest

from heliosdb_streaming.api.guard import RequestPolicy, media_type_problem, split_host

LOOP = "127.0.0.1"


def test_split_host() -> None:
    assert split_host("Example.COM:8081") == ("example.com", 8081)
    assert split_host("[::1]:8081") == ("::1", 8081)
    assert split_host("localhost") == ("localhost", None)
    assert split_host("host:notaport") is None
    assert split_host("") is None


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8081", "localhost:8081", "LOCALHOST", "[::1]:9", "localhost.", "127.0.0.1"]
)
def test_loopback_bind_allows_loopback_names_on_any_port(host: str) -> None:
    assert RequestPolicy.of("127.0.0.1").host_problem(host, LOOP) is None


@pytest.mark.parametrize(
    "host", ["evil.example:8081", "127.0.0.1.evil.example", "10.0.0.5:8081", "[::2]", ""]
)
def test_other_hosts_are_refused(host: str) -> None:
    why = RequestPolicy.of("127.0.0.1").host_problem(host, LOOP)
    assert why is not None and "--allowed-hosts" in why


def test_allowed_hosts_and_the_bind_name() -> None:
    policy = RequestPolicy.of("api.internal", ["Helios.Example.com", "[fd00::1]"])
    for host in ("api.internal:8081", "helios.example.com", "HELIOS.example.com:443", "[fd00::1]:80"):
        assert policy.host_problem(host, "10.0.0.5") is None
    assert policy.host_problem("other.example.com", "10.0.0.5") is not None
    # loopback names only when the connection came in on a loopback address
    assert policy.host_problem("localhost:8081", "10.0.0.5") is not None
    assert policy.host_problem("localhost:8081", "::1") is None


def test_wildcard_bind_allows_the_address_the_connection_arrived_on() -> None:
    policy = RequestPolicy.of("0.0.0.0", ["helios-api.ns.svc"])
    assert policy.host_problem("10.1.2.3:8081", "10.1.2.3") is None  # kubelet probes, Prometheus scrapes
    assert policy.host_problem("10.9.9.9:8081", "10.1.2.3") is not None
    assert policy.host_problem("helios-api.ns.svc:8081", "10.1.2.3") is None
    assert policy.host_problem("0.0.0.0:8081", "10.1.2.3") is not None
    assert policy.host_problem("localhost", "127.0.0.1") is None


def test_star_turns_the_host_check_off_but_not_the_origin_check() -> None:
    policy = RequestPolicy.of("0.0.0.0", ["*"])
    assert policy.host_problem("anything.example", "10.0.0.1") is None
    assert policy.origin_problem("http://anything.example", "10.0.0.1") is not None


def test_no_host_header_is_no_browser() -> None:
    assert RequestPolicy.of("127.0.0.1").host_problem(None, LOOP) is None


def test_origins() -> None:
    policy = RequestPolicy.of("127.0.0.1", ["helios.example.com"], ["https://console.example.com:8443"])
    allowed = [
        None,
        "http://127.0.0.1:8081",
        "http://localhost:3000",
        "https://helios.example.com",
        "https://console.example.com:8443",
        "HTTPS://CONSOLE.example.com:8443/",
    ]
    for origin in allowed:
        assert policy.origin_problem(origin, LOOP) is None, origin
    refused = [
        "null",
        "https://evil.example",
        "http://localhost.evil.example",
        "https://console.example.com",  # another port than the one allowed
        "file://",
        "ftp://localhost",
        "http://localhost:bad",
    ]
    for origin in refused:
        why = policy.origin_problem(origin, LOOP)
        assert why is not None and "--allowed-origins" in why, origin
    assert RequestPolicy.of("127.0.0.1", (), ["*"]).origin_problem("https://evil.example", LOOP) is None


@pytest.mark.parametrize(
    ("method", "content_type", "has_body", "refused"),
    [
        ("POST", "application/json", True, False),
        ("POST", "application/json; charset=utf-8", True, False),
        ("POST", "Application/JSON", True, False),
        ("POST", None, False, False),  # pause, resume, restart without a body
        ("DELETE", None, False, False),
        ("POST", "text/plain", True, True),  # the browser's "simple request"
        ("POST", "text/plain", False, True),
        ("POST", "application/x-www-form-urlencoded", True, True),
        ("POST", "multipart/form-data; boundary=x", True, True),
        ("DELETE", "text/plain", False, True),
        ("POST", "application/octet-stream", False, False),  # what aiohttp sends on an empty POST
        ("POST", "application/octet-stream", True, True),
        ("POST", None, True, True),  # a body must say it is JSON
        ("POST", "", True, True),
        ("GET", "text/plain", True, False),  # reads change nothing
    ],
)
def test_media_type(method: str, content_type: str | None, has_body: bool, refused: bool) -> None:
    assert (media_type_problem(method, content_type, has_body) is not None) is refused
