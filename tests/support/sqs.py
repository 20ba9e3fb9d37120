"""A local SQS endpoint for the tests: moto's server on a free port, one per session.

A plugin of tests/conftest.py: a test takes `sqs_endpoint` by name. The server
runs through tests/support/moto_launcher.py (moto with its O(queue depth)
attribute scan made lazy, see that file). The fixture sets dummy credentials
and region in the environment for the session, so both qchan's adapter (which
uses boto3's normal credential chain) and the tests' own boto3 clients find
them, and nothing can reach a real AWS account by accident: every client is
pointed at the local endpoint and signs with the key "testing".
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from support.helpers import wait_for

LAUNCHER = Path(__file__).with_name("moto_launcher.py")
START_TIMEOUT = 30.0

DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}
# Anything that could point boto3 at a real account or a different endpoint.
CLEARED_ENV = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_SQS",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def answers(endpoint: str) -> bool:
    """True once moto's management API answers a GET."""
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1.0) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class MotoServer:
    """One moto server process; `start()` waits (with a deadline) until it answers."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        # moto logs every request; a pipe nobody reads would fill up and
        # block the server, so the log goes to a file (read if it dies).
        self._log: IO[bytes] | None = None

    def start(self) -> MotoServer:
        env = {**os.environ, **DUMMY_ENV}
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(LAUNCHER), "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        try:
            wait_for(self._ready, START_TIMEOUT, f"moto server on {self.endpoint}")
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            err = ""
            if self._log is not None:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace")
            raise RuntimeError(f"moto server exited ({self.proc.returncode}): {err[-2000:]}")
        return answers(self.endpoint)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class dummy_aws_env:
    """Context manager: dummy credentials and region in os.environ, restored after."""

    def __enter__(self) -> None:
        self._saved = {k: os.environ.get(k) for k in (*DUMMY_ENV, *CLEARED_ENV)}
        for k in CLEARED_ENV:
            os.environ.pop(k, None)
        os.environ.update(DUMMY_ENV)

    def __exit__(self, *exc: Any) -> None:
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def sqs_endpoint() -> Iterator[str]:
    """The base URL of a local SQS endpoint (moto), with dummy AWS credentials set."""
    with dummy_aws_env(), MotoServer() as server:
        yield server.endpoint
