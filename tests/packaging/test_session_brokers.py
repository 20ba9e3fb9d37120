"""One moto server and one Kafka mock cluster per test session, whichever modules use
them: the broker fixtures are plugins (tests/conftest.py), never imported into a
module (which made a "session" fixture start once per importing module)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

TESTS = pathlib.Path(__file__).resolve().parents[1]

# Two modules each, in different folders, that take the session fixture.
SQS = [
    "adapters/test_sqs.py::test_missing_queue_is_a_clear_error",
    "security/test_security.py::test_aws_secret_key_stays_hidden_through_failures",
]
KAFKA = [
    "adapters/test_kafka.py::test_missing_topic_is_a_clear_error",
    "reliability/test_faults.py::test_baseline_no_fault[kafka]",
]


@pytest.mark.integration
def test_each_broker_fixture_starts_once_per_session() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "--setup-show",
            "-p",
            "no:cacheprovider",
            *(str(TESTS / t) for t in SQS + KAFKA),
        ],
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    setups = [  # "SETUP    S kafka_cluster (fixtures used: tmp_path_factory)"
        line.split("SETUP    S ", 1)[1].split()[0]
        for line in run.stdout.splitlines()
        if "SETUP    S " in line
    ]
    assert setups.count("sqs_endpoint") == 1, setups
    assert setups.count("kafka_cluster") == 1, setups
