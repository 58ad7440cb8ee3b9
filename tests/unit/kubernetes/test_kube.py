"""The API client's pure parts: URL paths, label selectors, error mapping, the library's configuration."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import kopf

from heliosdb_streaming.kubernetes import kube


def test_paths() -> None:
    assert kube.PODS.path("ns") == "/api/v1/namespaces/ns/pods"
    assert kube.PODS.path("ns", "p-0") == "/api/v1/namespaces/ns/pods/p-0"
    assert kube.PODS.path() == "/api/v1/pods"
    assert kube.NAMESPACES.path("ignored") == "/api/v1/namespaces"
    assert (
        kube.STREAMINGJOBS.path("ns", "j", "status")
        == "/apis/streaming.heliosdb.io/v1alpha2/namespaces/ns/streamingjobs/j/status"
    )
    assert kube.SAVEPOINTS.api_version == "streaming.heliosdb.io/v1alpha2" and kube.PODS.api_version == "v1"


def test_label_selectors() -> None:
    labels = {"b": "2", "a": "1"}
    assert kube.selector_text(labels) == "a=1,b=2"
    assert kube.matches({"metadata": {"labels": {"a": "1", "b": "2", "c": "3"}}}, labels)
    assert not kube.matches({"metadata": {"labels": {"a": "1"}}}, labels)
    assert kube.matches({}, None)


def test_errors_keep_status_and_reason() -> None:
    body = b'{"kind":"Status","code":404,"reason":"NotFound","message":"pods \\"x\\" not found"}'
    error = kube._error(404, body)
    assert isinstance(error, kube.NotFoundError) and error.message == 'pods "x" not found'
    assert isinstance(kube._error(409, b"{}"), kube.ConflictError)
    other = kube._error(500, b"not json")
    assert type(other) is kube.ApiError and other.status == 500 and other.message == "not json"


def test_configuration_follows_kopf_login() -> None:
    token = kube.configuration(kopf.ConnectionInfo(server="https://k8s:6443/", token="t0k", insecure=True))
    assert token.host == "https://k8s:6443" and not token.verify_ssl
    assert token.api_key == {"BearerToken": "t0k"} and token.api_key_prefix == {"BearerToken": "Bearer"}

    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n").decode()
    with_ca = kube.configuration(kopf.ConnectionInfo(server="https://k8s", ca_data=ca))
    assert with_ca.verify_ssl and with_ca.ssl_ca_cert is not None
    assert Path(with_ca.ssl_ca_cert).read_text() == "-----BEGIN CERTIFICATE-----\n"
    os.unlink(with_ca.ssl_ca_cert)

    basic = kube.configuration(kopf.ConnectionInfo(server="http://k8s", username="u", password="p"))
    assert basic.api_key_prefix == {"BearerToken": "Basic"}
    assert base64.b64decode(basic.api_key["BearerToken"]) == b"u:p"
