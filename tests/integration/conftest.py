"""Fixtures for integration tests: a real S3-protocol server (moto's server, in its own process).

``s3_options`` gives ``storage_from_uri`` options for the server. By default the fixture starts
``python -m moto.server -H 127.0.0.1 -p <free port>`` once per session, with the interpreter named by
``HELIOS_MOTO_PYTHON`` (default: this one) so moto may live in a separate venv, and fails the tests
if it does not come up. ``HELIOS_TEST_S3_ENDPOINT=http(s)://host:port`` uses a running server instead,
with credentials from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (default ``testing``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status)
    except urllib.error.HTTPError:
        return True  # an HTTP error status is still an answer
    except OSError:
        return False


@pytest.fixture(scope="session")
def s3_options() -> Iterator[dict[str, str]]:
    external = os.environ.get("HELIOS_TEST_S3_ENDPOINT")
    if external:
        yield {
            "endpoint": external,
            "access_key": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            "secret_key": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            "region": os.environ.get("AWS_REGION", "us-east-1"),
        }
        return
    python = os.environ.get("HELIOS_MOTO_PYTHON", sys.executable)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = Path(tempfile.mkstemp(prefix="helios-moto-", suffix=".log")[1])
    with log_path.open("wb") as log:
        try:
            process = subprocess.Popen(
                [python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        except OSError as e:
            pytest.fail(f"cannot start moto's server with {python!r} (HELIOS_MOTO_PYTHON): {e}")
    try:
        deadline = time.monotonic() + 60
        while not _answers_http(url):
            if process.poll() is not None:
                pytest.fail(
                    f"moto's server ({python} -m moto.server) exited with code {process.returncode}; "
                    f"is moto[server] installed there? log:\n{log_path.read_text(errors='replace')[-3000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"moto's server did not answer on {url} within 60 s; log:\n{log_path.read_text()[-3000:]}"
                )
            time.sleep(0.1)
        yield {"endpoint": url, "access_key": "testing", "secret_key": "testing", "region": "us-east-1"}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log_path.unlink(missing_ok=True)
