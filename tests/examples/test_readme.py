"""Every Python block of the README runs, so the documentation cannot rot."""

from __future__ import annotations

import pathlib
import re

import pytest
from support.helpers import need_service, start

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_runs(block: str) -> None:
    if "postgresql://" in block:  # the outbox's example needs the database
        need_service("127.0.0.1", 5432, "PostgreSQL")  # the outbox's example
    code = compile(block, str(README), "exec")
    namespace: dict[str, object] = {"__name__": "readme"}
    start(exec, code, namespace).outcome(60)  # a hung example fails instead of hanging
