"""Every Python block of the README runs, so the documentation cannot rot."""

from __future__ import annotations

import pathlib
import re

import pytest
from support.helpers import start

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_runs(block: str) -> None:
    if "postgresql://" in block:  # the outbox's example needs the database
        _needs_postgres()
    code = compile(block, str(README), "exec")
    namespace: dict[str, object] = {"__name__": "readme"}
    start(exec, code, namespace).outcome(60)  # a hung example fails instead of hanging


def _needs_postgres() -> None:
    import os
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            return
    except OSError:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not answering on 127.0.0.1:5432")
        pytest.skip("PostgreSQL is not answering on 127.0.0.1:5432")
