"""``helios server`` and ``helios operator`` as real subprocesses, for tests and benchmarks.

The server listens on a free port (``--port 0``); the URL is read from the first line it prints. Its
output goes to files next to its home so that a failure can show the log tail.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

HELIOS = Path(sys.executable).parent / "helios"
_LISTENING = re.compile(r"listening on (http://\S+)")


class HeliosServerProcess:
    """Starts ``helios server --port 0 --home HOME --max-parallelism N [ARGS]`` and waits until it listens.

    ``env`` is added to this process's environment, from which ``HELIOS_API_TOKEN`` and ``HELIOS_URL``
    are removed first (pass ``HELIOS_API_TOKEN`` in ``env`` to protect the server).
    """

    def __init__(
        self,
        home: Path,
        *args: str,
        max_parallelism: int = 8,
        env: dict[str, str] | None = None,
        startup_timeout_s: float = 30,
    ) -> None:
        if not HELIOS.exists():
            raise RuntimeError(f"{HELIOS} is missing: install the package (pip install -e .)")
        self.home = home
        self.out = home.parent / f"{home.name}-server.out"
        self.err = home.parent / f"{home.name}-server.err"
        command = [str(HELIOS), "server", "--port", "0", "--home", str(home)]
        command += ["--max-parallelism", str(max_parallelism), *args]
        inherited = {k: v for k, v in os.environ.items() if k not in ("HELIOS_API_TOKEN", "HELIOS_URL")}
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(command, stdout=out, stderr=err, env=inherited | (env or {}))
        self.url = self._wait_listening(startup_timeout_s)

    def _wait_listening(self, timeout_s: float) -> str:
        return self.wait_output(_LISTENING, timeout_s).group(1)

    def wait_output(self, pattern: str | re.Pattern[str], timeout_s: float = 30) -> re.Match[str]:
        """Waits until the server's stdout matches ``pattern`` (it prints what it did at startup
        after it listens, e.g. the demo job's submission)."""
        deadline = time.monotonic() + timeout_s
        while True:
            m = re.search(pattern, self.output())
            if m:
                return m
            if self.process.poll() is not None:
                raise AssertionError(
                    f"helios server exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {pattern!r} from helios server within {timeout_s}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def output(self) -> str:
        return self.out.read_text()

    def errors(self) -> str:
        return self.err.read_text()

    def log_tail(self) -> str:
        return self.output()[-2000:] + self.errors()[-4000:]

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> int:
        """Signals the server and returns its exit code; kills it (and fails) if it does not stop."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"helios server did not stop within {timeout_s}s:\n{self.log_tail()}"
            ) from None


def operator_command(home: Path, control_port: int, *args: str) -> list[str]:
    """``helios operator ARGS`` with its own home and a loopback control port, for tests and benchmarks."""
    return [
        sys.executable,
        "-m",
        "heliosdb_streaming.cli.main",
        "operator",
        # its own metrics on a port the system picks: the default 8083 would collide with any other
        # operator on the machine; ``args`` may name one (the last --metrics-port wins)
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        "0",
        *args,
        "--home",
        str(home),
        "--control-host",
        "127.0.0.1",
        "--control-port",
        str(control_port),
    ]


def operator_env(kubeconfig: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for an operator against ``kubeconfig``: without the Helios, AWS and
    kubeconfig settings of the caller, which would point it elsewhere. Its watches last 15 s instead
    of 60: on a loaded test machine the emulated API server has left a watch silent (an event never
    delivered, seen only when kopf lists again), and a test should not wait a minute for that."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HELIOS_", "AWS_", "KUBECONFIG"))}
    return {**base, "KUBECONFIG": str(kubeconfig), "HELIOS_WATCH_TIMEOUT_S": "15", **(extra or {})}
