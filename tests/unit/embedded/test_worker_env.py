"""What a local worker inherits of the server's environment (``embedded/launcher.py``)."""

from __future__ import annotations

import os

from heliosdb_streaming.embedded.launcher import worker_environment


def test_secrets_stay_out_and_python_settings_pass() -> None:
    env = worker_environment(
        {
            "HELIOS_API_TOKEN": "t0ken",
            "PATH": "/usr/bin",
            "PYTHONHASHSEED": "0",
            "PGPASSWORD": "pw",
            "X": "1",
        },
        "/srv",
    )
    assert env == {"PATH": "/usr/bin", "PYTHONHASHSEED": "0", "PGPASSWORD": "pw"}


def test_pythonpath_is_made_absolute_against_the_servers_directory() -> None:
    """Workers of a server run in its home: a relative PYTHONPATH must still name the same code."""
    env = worker_environment({"PYTHONPATH": os.pathsep.join(["libs/acme", "/opt/shared", ""])}, "/srv/app")
    assert env["PYTHONPATH"].split(os.pathsep) == ["/srv/app/libs/acme", "/opt/shared", "/srv/app/"]
    assert "PYTHONPATH" not in worker_environment({"PATH": "/bin"}, "/srv/app")
